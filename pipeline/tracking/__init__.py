"""MLflow, the only place that imports it: the store (store), runs as pipeline hooks (runs), the registry
policy (registry), the pyfunc encoder (pyfunc), encoders by URI (encoders) and the plots runs carry (plots)."""
