"""Run the notifier worker: python -m notifier (or orderops-notifier)."""

from notifier import agents, views  # noqa: F401  (registers the agent and the HTTP views)
from notifier.app import service


def main() -> None:
    service.run()


if __name__ == "__main__":
    main()
