"""CPU- and memory-bound steps the tasks process runs on the worker: transcode and embed."""
