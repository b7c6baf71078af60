"""Running a job: atomic outputs and safe loading, the script preamble, launching (torchrun, the warm worker)."""
