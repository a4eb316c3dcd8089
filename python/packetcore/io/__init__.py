"""Feed files and outputs: the formats, reading and writing them, and loading feeds."""
