"""Built-in policies. Each is registered in the ``tessera.policies`` entry-point group."""
