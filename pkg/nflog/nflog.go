// Package nflog reads packets that nftables' `log group N` statements
// send to nfnetlink_log: the deny log of NetworkPolicy (package policy)
// and the drop log of anti-spoofing (package antispoof). It is a small
// reader of its own (a netlink socket, no libnetfilter_log).
package nflog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Packet is one logged packet.
type Packet struct {
	// Prefix is the log statement's prefix: which rule logged it.
	Prefix string
	// HWProto is the frame's ethertype (0x0800 IPv4, 0x0806 ARP).
	HWProto uint16
	// InIf is the input interface's index; PhysInIf the bridge port's
	// (for a packet logged in the bridge family or while bridged).
	InIf, PhysInIf uint32
	// HWAddr is the frame's source MAC, when the kernel knows it.
	HWAddr net.HardwareAddr
	// Payload is the start of the packet from its network header (at
	// most the first 128 bytes).
	Payload []byte
}

// IPv4 is what a packet's IPv4 header says.
type IPv4 struct {
	Src, Dst netip.Addr
	Proto    uint8
	Port     uint16 // destination port (0 for ICMP)
}

// IPv4 reads the packet's IPv4 header; ok is false if it is not IPv4.
func (p Packet) IPv4() (IPv4, bool) {
	b := p.Payload
	if len(b) < 20 || b[0]>>4 != 4 {
		return IPv4{}, false
	}
	ihl := int(b[0]&0x0f) * 4
	h := IPv4{Src: netip.AddrFrom4([4]byte(b[12:16])), Dst: netip.AddrFrom4([4]byte(b[16:20])), Proto: b[9]}
	if h.Proto != 1 && len(b) >= ihl+4 {
		h.Port = binary.BigEndian.Uint16(b[ihl+2:])
	}
	return h, true
}

// ARP is what an Ethernet/IPv4 ARP packet says.
type ARP struct {
	Op        uint16 // 1 request, 2 reply
	SenderMAC net.HardwareAddr
	SenderIP  netip.Addr
	TargetIP  netip.Addr
}

// ARP reads the packet as ARP; ok is false if it is not Ethernet/IPv4 ARP.
func (p Packet) ARP() (ARP, bool) {
	b := p.Payload
	if p.HWProto != 0x0806 || len(b) < 28 || b[4] != 6 || b[5] != 4 {
		return ARP{}, false
	}
	return ARP{Op: binary.BigEndian.Uint16(b[6:]), SenderMAC: net.HardwareAddr(append([]byte(nil), b[8:14]...)),
		SenderIP: netip.AddrFrom4([4]byte(b[14:18])), TargetIP: netip.AddrFrom4([4]byte(b[24:28]))}, true
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

	nfulaPacketHdr     = 1
	nfulaIfindexIndev  = 4
	nfulaIfindexPhysin = 6
	nfulaHWAddr        = 8
	nfulaPayload       = 9
	nfulaPrefix        = 10
)

// Read binds NFLOG group in the calling thread's network namespace and
// calls fn with each logged packet until ctx ends. It returns at once with
// an error if the group cannot be bound (another listener holds it).
func Read(ctx context.Context, group uint16, fn func(Packet)) error {
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
			if p, ok := parse(m.Data[4:]); ok {
				fn(p)
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

// parse reads one NFLOG packet message's attributes.
func parse(b []byte) (Packet, bool) {
	var p Packet
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
			p.Prefix = string(v)
		case nfulaPacketHdr:
			if len(v) >= 2 {
				p.HWProto = binary.BigEndian.Uint16(v)
			}
		case nfulaIfindexIndev:
			if len(v) >= 4 {
				p.InIf = binary.BigEndian.Uint32(v)
			}
		case nfulaIfindexPhysin:
			if len(v) >= 4 {
				p.PhysInIf = binary.BigEndian.Uint32(v)
			}
		case nfulaHWAddr:
			// struct nfulnl_msg_packet_hw: be16 hw_addrlen, 2 bytes pad, 8 bytes addr
			if len(v) >= 4 {
				if n := int(binary.BigEndian.Uint16(v)); n > 0 && n <= 8 && len(v) >= 4+n {
					p.HWAddr = net.HardwareAddr(append([]byte(nil), v[4:4+n]...))
				}
			}
		case nfulaPayload:
			p.Payload = append([]byte(nil), v...)
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return p, p.Prefix != ""
}
