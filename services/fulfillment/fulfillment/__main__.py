"""Run the fulfillment worker: python -m fulfillment (or orderops-fulfillment)."""

from fulfillment import views, worker  # noqa: F401  (registers the batch path and the HTTP views)
from fulfillment.app import service


def main() -> None:
    service.run()


if __name__ == "__main__":
    main()
