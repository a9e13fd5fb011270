"""Pipeline configs shipped with rppg-prep, installed as the package ``rppg_prep.pipelines``."""
