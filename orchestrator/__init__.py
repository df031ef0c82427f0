"""cipbuild: the image build orchestrator for CIP Core."""

__version__ = "0.1.0"
