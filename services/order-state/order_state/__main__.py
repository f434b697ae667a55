"""Run the order-state worker: python -m order_state (or orderops-order-state)."""

from order_state import views, worker  # noqa: F401  (registers the batch path and the HTTP views)
from order_state.app import service


def main() -> None:
    service.run()


if __name__ == "__main__":
    main()
