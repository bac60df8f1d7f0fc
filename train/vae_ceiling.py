"""``python -m train.vae_ceiling``: the command as it was first documented; the check itself is
:mod:`train.evaluate.vae_ceiling` (``python -m train.evaluate.vae_ceiling``)."""

from train.evaluate.vae_ceiling import main, vae_ceiling

__all__ = ["main", "vae_ceiling"]

if __name__ == "__main__":
    main()
