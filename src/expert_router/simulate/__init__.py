"""The paper's study in virtual time: the emulated engines, the gateway's overhead and the users in one
discrete-event simulation, writing the same request records as a real run.

The engines are `expert_router.emulate.Engine` itself (one code path with the real-time server): this
package only replaces the wall clock by a virtual one and the HTTP hops by function calls.
"""

from expert_router.simulate.engines import VirtualEngine
from expert_router.simulate.events import EventQueue

__all__ = ["EventQueue", "VirtualEngine"]
