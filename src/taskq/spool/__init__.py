"""The spool on disk, in layers: :mod:`.layout` (every name), :mod:`.fileio` (every
changing system call), :mod:`.store` (files: publish, move, read, list),
:mod:`.locks` (run locks and unique keys), :mod:`.jobs` (jobs: find, load, own, move,
quarantine). Nothing outside this package builds a file name or changes a file."""
