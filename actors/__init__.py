"""A small, generic actor runtime on trio.

Layout (private modules, this namespace re-exports the public API):

* ``_framing``   sans-IO length-prefixed frames
* ``_wire``      the msgpack message dialog between two ends of a channel
* ``_channel``   request/reply + notifications + heartbeats over a pair of trio streams
* ``_lane``      the child's blocking end of an extra channel ("lane"), for one thread
* ``_heartbeat`` liveness checking on top of a channel's ping
* ``_process``   a child OS process as an actor: spawn, pipes, heartbeat, stop escalation
* ``_forkserver`` a fork server ("zygote") that starts children pre-imported; the server
  itself is ``_forkserver_main``, their messages ``_forkserver_wire``
* ``_lines``     sans-IO splitting of a child's stdout/stderr into bounded lines
* ``_child``     the child's side: connect to the parent, exit when the parent is gone
* ``_supervisor`` OTP-style supervision: child specs, restart policies, intensity, backoff
* ``_mailbox``   a bounded mailbox handled one message at a time
* ``_errors``    the exception tree; ``_util`` small shared helpers

It knows nothing about WebAssembly or Vessel.
"""

from __future__ import annotations

from ._channel import Channel as Channel
from ._channel import ChannelStatistics as ChannelStatistics
from ._channel import NotifyHandler as NotifyHandler
from ._channel import PendingRequest as PendingRequest
from ._channel import RequestHandler as RequestHandler
from ._child import PARENT_LOST_EXIT_CODE as PARENT_LOST_EXIT_CODE
from ._child import ParentLink as ParentLink
from ._child import open_parent_channel as open_parent_channel
from ._errors import ActorError as ActorError
from ._errors import ChannelBroken as ChannelBroken
from ._errors import ChannelClosed as ChannelClosed
from ._errors import FrameTooLarge as FrameTooLarge
from ._errors import MailboxClosed as MailboxClosed
from ._errors import MailboxFull as MailboxFull
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteError as RemoteError
from ._errors import SpawnError as SpawnError
from ._errors import UnknownChild as UnknownChild
from ._forkserver import ForkedProcess as ForkedProcess
from ._forkserver import ForkServer as ForkServer
from ._forkserver import ForkServerLaunch as ForkServerLaunch
from ._forkserver import ForkServerUnavailable as ForkServerUnavailable
from ._forkserver import launch_forkserver as launch_forkserver
from ._forkserver import open_forkserver as open_forkserver
from ._framing import MAX_FRAME_SIZE as MAX_FRAME_SIZE
from ._framing import FrameDecoder as FrameDecoder
from ._framing import encode_frame as encode_frame
from ._heartbeat import wait_heartbeat_lost as wait_heartbeat_lost
from ._lane import BlockingChannel as BlockingChannel
from ._lane import LaneTimeout as LaneTimeout
from ._mailbox import Mailbox as Mailbox
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._process import CHANNEL_FDS_ENV as CHANNEL_FDS_ENV
from ._process import LANE_FDS_ENV as LANE_FDS_ENV
from ._process import MAX_OUTPUT_LINE as MAX_OUTPUT_LINE
from ._process import STOP_METHOD as STOP_METHOD
from ._process import ChildProcess as ChildProcess
from ._process import ExitInfo as ExitInfo
from ._process import ProcessActor as ProcessActor
from ._process import ProcessSpec as ProcessSpec
from ._process import open_process_actor as open_process_actor
from ._spin import affinity_changed as affinity_changed
from ._supervisor import ChildInfo as ChildInfo
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import ChildState as ChildState
from ._supervisor import Restart as Restart
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorEvent as SupervisorEvent
from ._wire import ErrorReply as ErrorReply
from ._wire import Message as Message
from ._wire import Notify as Notify
from ._wire import Ping as Ping
from ._wire import Pong as Pong
from ._wire import Reply as Reply
from ._wire import Request as Request
