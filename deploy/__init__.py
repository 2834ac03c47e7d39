"""The served application on Ray Serve: the ingress, the serving replicas, the task board and the training sidecar."""
