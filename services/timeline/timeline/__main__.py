"""Run the timeline worker: python -m timeline (or orderops-timeline)."""

from timeline import views, worker  # noqa: F401  (registers the batch path, the API and the console)
from timeline.app import service


def main() -> None:
    service.run()


if __name__ == "__main__":
    main()
