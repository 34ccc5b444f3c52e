"""Example handlers to copy: each module is one worker (`qworker run handlers.<module>`)."""
