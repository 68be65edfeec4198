"""CLI subcommands. Each module wires components to the command line and to tracking; components
themselves (cosyml.data, cosyml.features, cosyml.models, ...) know nothing of the CLI, MLflow or DVC."""
