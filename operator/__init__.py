"""The kopf operator that reconciles fluxbee.io resources into Kubernetes objects."""
