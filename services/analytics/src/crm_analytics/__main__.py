from crm_analytics.app import SPEC
from crm_kit.runtime import main as run


def main() -> None:
    run(SPEC)


if __name__ == "__main__":
    main()
