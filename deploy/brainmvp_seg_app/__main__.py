"""``python -m brainmvp_seg_app``: run the application with the SDK's command line (``-i``, ``-o``, ``-m``, ``-l``)."""

from brainmvp_seg_app.app import main

if __name__ == "__main__":
    main()
