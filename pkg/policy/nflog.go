package policy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Deny logs. Each pod chain logs what it drops to NFLOG group LogGroup,
// rate-limited per chain, with the chain's name as the prefix; ReadDrops
// reads them, and the Enforcer maps a chain back to its pod and policies
// (Enforcer.Chain), so a drop is told as "default deny of ns/pod by
// policies …", never as "some rule".

// LogGroup is the NFLOG group of the deny log.
const LogGroup = 7

// logRate is each pod chain's deny-log budget (the drops themselves are
// all counted).
const logRate = "limit rate 10/second burst 20 packets"

// Drop is one logged drop.
type Drop struct {
	Chain    string // the pod chain that dropped it
	Src, Dst netip.Addr
	Proto    uint8
	Port     uint16 // destination port (0 for ICMP)
}

// nfnetlink_log's constants (linux/netfilter/nfnetlink_log.h).
const (
	nfnlSubsysULOG  = 4
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1
	nfulaCfgCmd     = 1
	nfulaCfgMode    = 2
	nfulnlCmdBind   = 1
	nfulnlCopyPkt   = 2
	nfulaPayload    = 9
	nfulaPrefix     = 10
)

// ReadDrops binds NFLOG group in the calling thread's network namespace
// and calls fn with each drop until ctx ends. It returns at once with an
// error if the group cannot be bound (another listener holds it).
func ReadDrops(ctx context.Context, group uint16, fn func(Drop)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("nflog socket: %w", err)
	}
	defer unix.Close(fd)
	// A netlink socket cannot be shut down to wake a blocked read: reads
	// time out instead, and the loop looks at ctx between them.
	tv := unix.NsecToTimeval((250 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("nflog socket timeout: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("nflog bind: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	// bind the group, then ask for packets (the first 128 bytes suffice)
	cmd := nlAttr(nfulaCfgCmd, []byte{nfulnlCmdBind})
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, 128)
	mode[4] = nfulnlCopyPkt
	for seq, attrs := range [][]byte{cmd, nlAttr(nfulaCfgMode, mode)} {
		if err := nflogConfig(fd, uint32(seq+1), group, attrs); err != nil {
			return fmt.Errorf("nflog group %d: %w", group, err)
		}
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue // overrun: some log lines lost, the drops still counted
		}
		if err != nil {
			return fmt.Errorf("nflog receive: %w", err)
		}
		if n == 0 {
			return nil
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if m.Header.Type != nfnlSubsysULOG<<8|nfulnlMsgPacket || len(m.Data) < 4 {
				continue
			}
			if d, ok := parseDrop(m.Data[4:]); ok {
				fn(d)
			}
		}
	}
}

// nflogConfig sends one config message and waits for its ack.
func nflogConfig(fd int, seq uint32, group uint16, attrs []byte) error {
	body := make([]byte, 4, 4+len(attrs))
	body[0] = unix.AF_UNSPEC
	binary.BigEndian.PutUint16(body[2:], group)
	body = append(body, attrs...)
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], nfnlSubsysULOG<<8|nfulnlMsgConfig)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type == unix.NLMSG_ERROR && m.Header.Seq == seq && len(m.Data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
					return unix.Errno(-code)
				}
				return nil
			}
		}
	}
}

func nlAttr(typ uint16, v []byte) []byte {
	l := 4 + len(v)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b, uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], v)
	return b
}

// parseDrop reads the prefix and the IPv4 packet of one NFLOG message's
// attributes.
func parseDrop(b []byte) (Drop, bool) {
	var d Drop
	var payload []byte
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & 0x3fff
		if l < 4 || l > len(b) {
			break
		}
		v := b[4:l]
		switch typ {
		case nfulaPrefix:
			for len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			d.Chain = string(v)
		case nfulaPayload:
			payload = v
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	if d.Chain == "" || len(payload) < 20 || payload[0]>>4 != 4 {
		return d, false
	}
	ihl := int(payload[0]&0x0f) * 4
	d.Src = netip.AddrFrom4([4]byte(payload[12:16]))
	d.Dst = netip.AddrFrom4([4]byte(payload[16:20]))
	d.Proto = payload[9]
	if d.Proto != 1 && len(payload) >= ihl+4 {
		d.Port = binary.BigEndian.Uint16(payload[ihl+2:])
	}
	return d, true
}
