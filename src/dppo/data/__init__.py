"""The data stage: loading hub-schema datasets, validation, the percentile cut; the embedded task and its tiny model."""
