"""The exchange: the wire index, the loss model, conversations, live feeds, workers."""
