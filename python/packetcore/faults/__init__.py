"""Faults between a client and a server: the fault model and the proxy."""
