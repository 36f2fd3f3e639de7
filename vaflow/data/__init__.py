"""Data: sources (synthetic world, VGGSound, folders), media I/O, manifest, shards."""
