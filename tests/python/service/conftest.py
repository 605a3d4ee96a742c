"""Tests of the in-process Service: the registry's models routed and run without a network."""
