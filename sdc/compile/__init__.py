"""The build: stages that turn a diffusers folder into a validated bundle, and the `sdc` CLI."""
