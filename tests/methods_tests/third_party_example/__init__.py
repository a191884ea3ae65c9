"""A method written outside ``embadvisor/methods``, tested through the public contract entry point."""
