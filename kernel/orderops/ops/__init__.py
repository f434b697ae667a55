"""Operations: settings, the CLI, topic administration, security, deployment and monitoring config."""
