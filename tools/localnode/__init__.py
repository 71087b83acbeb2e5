"""Local node agent: a Node whose pods run as local processes in their own network and mount
namespaces, using the project's own Python environment instead of the container image."""
