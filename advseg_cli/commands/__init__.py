"""Click commands of the stages; ``advseg_cli.cli`` registers them on the ``advseg`` group."""
