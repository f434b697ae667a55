"""Run the returns worker: python -m returns (or orderops-returns)."""

from returns import agents, views  # noqa: F401  (registers the agent and the HTTP views)
from returns.app import service


def main() -> None:
    service.run()


if __name__ == "__main__":
    main()
