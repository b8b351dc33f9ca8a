"""
Tests for nymprov.wire.clientapi, the client-API message codec.
"""

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.sphinx.params import PacketSize
from nymprov.wire import clientapi as api


def request_ids():
    """
    Build a request id: any unsigned 32-bit int.
    """
    return st.integers(0, 2**32 - 1)


def blobs(n):
    """
    Build exactly ``n`` arbitrary bytes.
    """
    return st.binary(min_size=n, max_size=n)


def sphinx_packets():
    """
    Build a packet of one of the five Sphinx sizes (content is irrelevant
    to the codec, so mostly zeros with a random head).
    """
    return st.tuples(st.sampled_from(list(PacketSize)), blobs(8)).map(
        lambda t: t[1] + bytes(t[0].packet_size - 8)
    )


def slot_lists(slot_size):
    """
    Build up to 8 slots whose data fits ``slot_size``.
    """
    slot = st.one_of(
        st.binary(max_size=slot_size).map(api.Slot.message),
        st.just(api.Slot.dummy()),
        st.binary(max_size=slot_size).map(lambda d: api.Slot(api.SLOT_DUMMY, d)),
    )
    return st.lists(slot, max_size=8).map(tuple)


def requests():
    """
    Build any request message.
    """
    rid = {"request_id": request_ids()}
    return st.one_of(
        st.builds(api.Challenge, **rid),
        st.builds(api.Register, blobs(32), blobs(64), st.binary(max_size=255), **rid),
        st.builds(api.Auth, blobs(32), blobs(32), **rid),
        st.builds(api.Send, blobs(32), sphinx_packets(), **rid),
        st.builds(api.Pull, st.integers(0, 0xFFFF), st.booleans(), **rid),
        st.builds(api.Ack, st.integers(0, 2**64 - 1), **rid),
        st.builds(api.Forget, **rid),
        st.builds(api.Ping, **rid),
    )


def error_messages():
    """
    Build an error text whose UTF-8 form fits in 512 bytes.
    """
    return st.text(max_size=128)


def responses():
    """
    Build any response message.
    """
    rid = {"request_id": request_ids()}
    messages = st.integers(0, 300).flatmap(
        lambda size: st.builds(
            api.Messages, st.integers(0, 2**64 - 1), st.just(size), slot_lists(size), **rid
        )
    )
    return st.one_of(
        st.builds(api.ChallengeOk, blobs(32), blobs(32), **rid),
        st.builds(api.Registered, blobs(32), **rid),
        st.builds(api.AuthOk, **rid),
        st.builds(api.Sent, **rid),
        messages,
        st.builds(api.AckOk, st.integers(0, 2**32 - 1), **rid),
        st.builds(api.ForgetOk, **rid),
        st.builds(api.Pong, **rid),
        st.builds(
            api.Error,
            st.one_of(st.sampled_from(list(api.ErrorCode)), st.integers(0, 0xFFFF)),
            error_messages(),
            **rid,
        ),
    )


def split_frame(frame):
    """
    Check a frame's length prefix and return the body after it.
    """
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    return frame[4:]


class RoundTripTests(SynchronousTestCase):
    """
    Every message decodes to what was encoded.
    """

    @settings(max_examples=200)
    @given(requests())
    def test_requests(self, message):
        """
        A request round-trips through encode and decode_request.
        """
        decoded = api.decode_request(split_frame(api.encode(message)))
        self.assertEqual(decoded, message)
        self.assertIs(type(decoded), type(message))

    @settings(max_examples=200)
    @given(responses())
    def test_responses(self, message):
        """
        A response round-trips through encode and decode_response.
        """
        decoded = api.decode_response(split_frame(api.encode(message)))
        self.assertEqual(decoded, message)
        self.assertIs(type(decoded), type(message))

    @settings(max_examples=50)
    @given(st.integers(1, 100), slot_lists(100))
    def test_slots_fixed_size(self, slot_size, slots):
        """
        Every slot takes exactly 5 + slot_size bytes, whatever it holds, so
        the frame length depends only on the count.
        """
        slots = tuple(s for s in slots if len(s.data) <= slot_size)
        frame = api.encode(api.Messages(1, slot_size, slots))
        self.assertEqual(len(frame), 4 + 5 + 14 + len(slots) * (5 + slot_size))


class LayoutTests(SynchronousTestCase):
    """
    Byte layouts match doc/protocol.md.
    """

    def test_ping_frame(self):
        """
        PING with id 0x01020304 is length 5, type 8, the id.
        """
        self.assertEqual(
            api.encode(api.Ping(request_id=0x01020304)),
            bytes.fromhex("00000005" "08" "01020304"),
        )

    def test_register_layout(self):
        """
        REGISTER is address, signature, invite length, invite.
        """
        frame = api.encode(api.Register(b"A" * 32, b"S" * 64, b"xy", request_id=9))
        self.assertEqual(frame[:9], bytes.fromhex("00000068" "02" "00000009"))
        self.assertEqual(frame[9:], b"A" * 32 + b"S" * 64 + b"\x02xy")

    def test_pull_layout(self):
        """
        PULL is max_count u16 then flags, bit 0 for padding.
        """
        self.assertEqual(api.encode(api.Pull(258, pad=True))[9:], b"\x01\x02\x01")

    def test_messages_layout(self):
        """
        MESSAGES is lease, slot size, count, then kind/length/data/fill.
        """
        frame = api.encode(
            api.Messages(1, 4, (api.Slot.message(b"hi"),)), fill=lambda n: b"\xee" * n
        )
        self.assertEqual(
            frame[9:],
            bytes.fromhex("0000000000000001" "00000004" "0001" "01" "00000002" "6869" "eeee"),
        )

    def test_error_layout(self):
        """
        ERROR is code u16 then UTF-8 text.
        """
        frame = api.encode(api.Error(api.ErrorCode.BAD_TOKEN, "nö", request_id=2))
        self.assertEqual(frame[4:], bytes.fromhex("ff00000002" "0005") + "nö".encode())

    def test_signed_bytes(self):
        """
        The registration proof covers context, provider, nonce, address.
        """
        self.assertEqual(
            api.register_signed_bytes(b"P" * 32, b"N" * 32, b"A" * 32),
            b"nymprov-register-v1\x00" + b"P" * 32 + b"N" * 32 + b"A" * 32,
        )
        self.assertRaises(ValueError, api.register_signed_bytes, b"P", b"N" * 32, b"A" * 32)


class RefusalTests(SynchronousTestCase):
    """
    Bad frames raise typed errors that carry the request id when known.
    """

    def assert_refused(self, body, error, code, request_id=0, decode=api.decode_request):
        e = self.assertRaises(error, decode, body)
        self.assertEqual(e.code, code)
        self.assertEqual(e.request_id, request_id)
        self.assertIsInstance(e, api.ClientApiError)
        return e

    def test_too_short(self):
        """
        Fewer than 5 bytes cannot carry type and id: MALFORMED, id 0.
        """
        for body in (b"", b"\x08", b"\x08\x00\x00\x00"):
            self.assert_refused(body, api.MalformedRequest, api.ErrorCode.MALFORMED)

    def test_unknown_type(self):
        """
        Unknown types, and response types sent as requests, are UNKNOWN_TYPE
        with the request id echoed.
        """
        for t in (0x00, 0x09, 0x81, 0xFF):
            self.assert_refused(
                bytes((t,)) + b"\x00\x00\x00\x07", api.UnknownType,
                api.ErrorCode.UNKNOWN_TYPE, 7,
            )
        self.assert_refused(
            b"\x01\x00\x00\x00\x07", api.UnknownType, api.ErrorCode.UNKNOWN_TYPE, 7,
            decode=api.decode_response,
        )

    def test_too_large(self):
        """
        A body over the request limit is FRAME_TOO_LARGE.
        """
        body = b"\x08" + bytes(api.MAX_REQUEST_FRAME)
        self.assert_refused(body, api.FrameTooLarge, api.ErrorCode.FRAME_TOO_LARGE)

    def test_trailing_bytes(self):
        """
        Any byte after a complete body is MALFORMED, for every request.
        """
        for message in (
            api.Challenge(request_id=3),
            api.Register(b"a" * 32, b"s" * 64, b"inv", request_id=3),
            api.Auth(b"a" * 32, b"t" * 32, request_id=3),
            api.Pull(5, request_id=3),
            api.Ack(5, request_id=3),
            api.Forget(request_id=3),
            api.Ping(request_id=3),
        ):
            body = api.encode(message)[4:] + b"\x00"
            self.assert_refused(body, api.MalformedRequest, api.ErrorCode.MALFORMED, 3)

    def test_trailing_bytes_responses(self):
        """
        Any byte after a complete response body is MALFORMED.
        """
        for message in (
            api.ChallengeOk(b"p" * 32, b"n" * 32, request_id=3),
            api.Registered(b"t" * 32, request_id=3),
            api.AuthOk(request_id=3),
            api.Messages(1, 3, (api.Slot.message(b"x"),), request_id=3),
            api.AckOk(1, request_id=3),
            api.Pong(request_id=3),
        ):
            body = api.encode(message)[4:] + b"\x00"
            self.assert_refused(
                body, api.MalformedResponse, api.ErrorCode.MALFORMED, 3,
                decode=api.decode_response,
            )

    def test_send_wrong_packet_size(self):
        """
        A SEND whose packet is no Sphinx size is MALFORMED.
        """
        for length in (0, 1, 2412, 2414):
            body = b"\x04\x00\x00\x00\x05" + bytes(32 + length)
            self.assert_refused(body, api.MalformedRequest, api.ErrorCode.MALFORMED, 5)

    def test_register_invite_length_mismatch(self):
        """
        A REGISTER whose invite length byte disagrees is MALFORMED.
        """
        good = api.encode(api.Register(b"a" * 32, b"s" * 64, b"abc"))[4:]
        self.assert_refused(good[:-1], api.MalformedRequest, api.ErrorCode.MALFORMED)

    def test_pull_unknown_flags(self):
        """
        PULL flags other than bit 0 are MALFORMED.
        """
        self.assert_refused(
            b"\x05\x00\x00\x00\x01\x00\x05\x02", api.MalformedRequest, api.ErrorCode.MALFORMED, 1
        )

    def test_messages_slot_overflow(self):
        """
        A slot claiming more than slot_size bytes is MALFORMED.
        """
        body = (
            b"\x85\x00\x00\x00\x01" + struct.pack(">QIH", 1, 2, 1) + b"\x01" + struct.pack(">I", 3) + b"ab"
        )
        self.assert_refused(
            body, api.MalformedResponse, api.ErrorCode.MALFORMED, 1, decode=api.decode_response
        )

    def test_error_bad_utf8(self):
        """
        An ERROR with invalid UTF-8 is MALFORMED.
        """
        self.assert_refused(
            b"\xff\x00\x00\x00\x01\x00\x01\xff", api.MalformedResponse, api.ErrorCode.MALFORMED, 1,
            decode=api.decode_response,
        )

    def test_unknown_error_code_kept(self):
        """
        An ERROR code this version does not know is kept as a number.
        """
        decoded = api.decode_response(b"\xff\x00\x00\x00\x01\x01\x00")
        self.assertEqual(decoded.code, 256)
        self.assertEqual(api.error_reason(decoded.code), "code_256")

    @settings(max_examples=300)
    @given(st.binary(max_size=200))
    def test_garbage_requests(self, body):
        """
        Arbitrary bodies either decode to a request or raise ClientApiError.
        """
        try:
            message = api.decode_request(body)
        except api.ClientApiError as e:
            self.assertIn(e.code, set(api.ErrorCode))
        else:
            self.assertIn(type(message), api.REQUEST_TYPES.values())
            # A decoded request re-encodes to the same bytes.
            self.assertEqual(api.encode(message)[4:], body)

    @settings(max_examples=300)
    @given(st.sampled_from(sorted(api.RESPONSE_TYPES)), request_ids(), st.binary(max_size=200))
    def test_garbage_responses(self, message_type, request_id, rest):
        """
        A response type with arbitrary bytes decodes or raises ClientApiError.
        """
        body = struct.pack(">BI", message_type, request_id) + rest
        try:
            message = api.decode_response(body)
        except api.ClientApiError as e:
            self.assertEqual(e.request_id, request_id)
        else:
            self.assertEqual(message.request_id, request_id)


class ConstructionTests(SynchronousTestCase):
    """
    Messages that cannot be encoded are refused when built.
    """

    def test_bad_fields(self):
        """
        Wrong lengths and out-of-range numbers raise ValueError.
        """
        self.assertRaises(ValueError, api.Auth, b"a" * 31, b"t" * 32)
        self.assertRaises(ValueError, api.Register, b"a" * 32, b"s" * 64, b"i" * 256)
        self.assertRaises(ValueError, api.Pull, 70000)
        self.assertRaises(ValueError, api.Ping, request_id=2**32)
        self.assertRaises(ValueError, api.Error, 1, "x" * 513)
        self.assertRaises(ValueError, api.Messages, 1, 2, (api.Slot.message(b"abc"),))
        self.assertRaises(ValueError, api.Send, b"h" * 32, b"short")

    def test_oversize_response_refused(self):
        """
        A MESSAGES response above 16 MiB cannot be encoded.
        """
        slots = (api.Slot.dummy(),) * 2
        message = api.Messages(1, 9 * 1024 * 1024, slots)
        self.assertRaises(ValueError, api.encode, message, fill=bytes)

    def test_remote_error(self):
        """
        An ERROR converts to a RemoteError with its code and id.
        """
        e = api.Error(api.ErrorCode.REPLAY, "seen", request_id=4).as_exception()
        self.assertIsInstance(e, api.RemoteError)
        self.assertEqual((e.code, e.reason, e.request_id), (api.ErrorCode.REPLAY, "replay", 4))

    def test_messages_property(self):
        """
        Messages.messages lists the real messages only.
        """
        m = api.Messages(1, 4, (api.Slot.message(b"a"), api.Slot.dummy(), api.Slot.message(b"b")))
        self.assertEqual(m.messages, (b"a", b"b"))
