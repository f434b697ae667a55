"""Run the notifier worker: python -m notifier (or orderops-notifier)."""

from notifier import views, worker  # noqa: F401  (registers the batch path and the HTTP views)
from notifier.app import service


def main() -> None:
    service.run()


if __name__ == "__main__":
    main()
