"""In-repo backends: ``mock`` (and later ``torch``, ``fsdp``, ``modal``)."""
