"""Run the returns worker: python -m returns (or orderops-returns)."""

from returns import views, worker  # noqa: F401  (registers the batch path and the HTTP views)
from returns.app import service


def main() -> None:
    service.run()


if __name__ == "__main__":
    main()
