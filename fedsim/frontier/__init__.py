"""The frontier of a sweep: per-setting aggregates over seeds and attacked updates (``stats``), the verdict
(``verdict``) and ``frontier.png`` (``plot``). Pure functions on rows, so each is tested on hand-made tables.
Nothing is imported here: ``fedleak report`` reads a verdict without loading matplotlib."""
