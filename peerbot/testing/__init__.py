"""Local stand-ins for the outside world, as strict as the real services.

Used by the test suite, the benchmarks and ``peerbot demo`` (the way kopf ships ``kopf.testing``):

- :mod:`peerbot.testing.kubernetes`: a Kubernetes API emulator (kmock) that the real kopf and kubectl use;
- :mod:`peerbot.testing.gcs`: fake-gcs-server, with generation preconditions;
- :mod:`peerbot.testing.slack`: a Slack Web API and Socket Mode server;
- :mod:`peerbot.testing.claude`: a scripted Anthropic Messages API server;
- :mod:`peerbot.testing.github`: a GitHub REST server backed by real bare git repositories;
- :mod:`peerbot.testing.kubelet` and :mod:`peerbot.testing.warm`: kubelets that run worker Jobs and idle
  pods as local processes (both follow the API with :mod:`peerbot.testing.watching`).
"""
