"""The KIE.ai provider simulator: a small Starlette app that speaks ``docs/PROVIDER.md``.

It serves the generic jobs API (``/api/v1/jobs/createTask``, ``/api/v1/jobs/recordInfo``), the Veo 3 family
(``/api/v1/veo/generate``, ``/api/v1/veo/record-info``) and the account balance (``/api/v1/chat/credit``) with
the provider's envelope, bearer auth, per-key rate limits, a credit balance and callbacks on completion.
Directives in the prompt (``[sim:seconds=S]``, ``[sim:fail=CODE]``, ``[sim:create=CODE]``,
``[sim:nocallback]``, ``[sim:flaky]``) steer one task. ``/__sim/stats``, ``/__sim/reset`` and
``/__sim/credits`` let tests observe and steer the simulator itself.

Build the app with :func:`sim.app.create_app` and :class:`sim.options.SimOptions` (also importable from
``sim.app``).
"""
