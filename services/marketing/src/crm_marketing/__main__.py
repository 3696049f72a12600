from crm_kit.runtime import main as run
from crm_marketing.app import SPEC


def main() -> None:
    run(SPEC)


if __name__ == "__main__":
    main()
