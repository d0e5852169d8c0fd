/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Network exerciser on virtio-net (virtio 1.2, 5.1), at CPL3:
 *   ferry.net.ip=<a.b.c.d>/<prefix>   guest address; answers ARP and ICMP echo
 *   ferry.net.peer=<a.b.c.d>:<port>   UDP stream to this peer (MAC from ARP)
 *   ferry.net.rate=<Mbit/s>           payload bit rate of the stream, 0 = flat out
 *   ferry.net.size=<bytes>            UDP payload size, 24..1472, default 1400
 *   ferry.net.port=<port>             UDP port checked for incoming streams (5201)
 *
 * No offloads: checksums are computed here. One receive buffer per packet
 * (no VIRTIO_NET_F_MRG_RXBUF), each buffer = 12-byte virtio_net_hdr + frame
 * (5.1.6, the header always has num_buffers with VIRTIO_F_VERSION_1).
 *
 * Stream datagram (UDP payload, little-endian; docs/test-guest.md and
 * tests/system/udpstream.py):
 *   0  u32 magic 0x46455259    4  u32 stream id    8  u64 sequence number
 *   16 u32 length (whole payload)    20 u32 CRC-32 (IEEE, zlib) of bytes 0-19 then 24-end
 *   24.. byte j = (j + 13 * seq) mod 256
 */
#include "lib/cmdline.h"
#include "lib/printf.h"
#include "lib/string.h"
#include "lib/x86.h"
#include "user/ulib.h"
#include "user/virtio.h"

/* 5.1.3 Feature bits */
#define VIRTIO_NET_F_MAC        5

#define NET_HDR         12
#define BUF_SIZE        2048
#define RXQ             0
#define TXQ             1
#define QSIZE           256
#define MAX_REPORTS     8

#define STREAM_MAGIC    0x46455259u
#define STREAM_HDR      24

#define ETH_ARP         0x0806
#define ETH_IP          0x0800

static struct vdev *dev;
static struct virtq *rxq, *txq;
static u8 mac[6], peer_mac[6];
static u32 my_ip, peer_ip, prefix;
static u16 peer_port, listen_port;
static bool peer_known, have_peer;
static u32 size;
static u64 rate_Bps;
static u8 *tx_free[QSIZE];
static u32 ntx_free;
static u16 ip_id;
static u32 crc_table[256];
static u32 tx_stream;
static u64 tx_seq, tx_pkts, tx_bytes, credit, last_credit_ns;
static u64 rx_pkts, rx_bytes, lost, corrupt, reorder, rx_expect;
static u32 rx_stream;
static bool rx_have_stream;
static u32 reports;
static u64 next_stats, next_arp;
static bool rx_reposted;

bool net_active(void)
{
    return dev != NULL;
}

static inline u16 be16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static inline u32 be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }
static inline void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static inline void put32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }
static inline u32 le32(const u8 *p) { return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }
static inline void putle32(u8 *p, u32 v) { p[0] = (u8)v; p[1] = (u8)(v >> 8); p[2] = (u8)(v >> 16); p[3] = (u8)(v >> 24); }

static void crc_init(void)
{
    for (u32 i = 0; i < 256; i++) {
        u32 c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static u32 crc32_update(u32 crc, const u8 *p, u32 n)
{
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* RFC 1071 internet checksum: partial sum (not folded, not inverted). */
static u64 csum_add(u64 sum, const u8 *p, u32 n)
{
    while (n >= 2) {
        sum += (u32)(p[0] << 8 | p[1]);
        p += 2;
        n -= 2;
    }
    if (n)
        sum += (u32)(p[0] << 8);
    return sum;
}

static u16 csum_fold(u64 sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

static void fmt_ip(char *b, u32 ip)
{
    snprintf(b, 16, "%u.%u.%u.%u", ip >> 24, (ip >> 16) & 255, (ip >> 8) & 255, ip & 255);
}

static void fmt_mac(char *b, const u8 *m)
{
    snprintf(b, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* Parses a.b.c.d, then returns the rest. NULL if malformed. */
static const char *parse_ip(const char *s, u32 *ip)
{
    u32 v = 0;
    for (int i = 0; i < 4; i++) {
        u32 o = 0, nd = 0;
        while (*s >= '0' && *s <= '9' && nd < 4) {
            o = o * 10 + (u32)(*s++ - '0');
            nd++;
        }
        if (!nd || o > 255 || (i < 3 && *s++ != '.'))
            return NULL;
        v = v << 8 | o;
    }
    *ip = v;
    return s;
}

static u32 parse_num(const char *s)
{
    u32 v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (u32)(*s++ - '0');
    return v;
}

/* ---- transmit ---- */

static u8 *tx_get(void)
{
    return ntx_free ? tx_free[--ntx_free] : NULL;
}

static void tx_reclaim(void)
{
    u8 *b;
    while ((b = vq_get(txq, NULL)) != NULL)
        tx_free[ntx_free++] = b;
}

/* buf: NET_HDR zero bytes, then the frame of `len` bytes. */
static void tx_send(u8 *buf, u32 len)
{
    u64 a = (u64)buf;
    u32 l = NET_HDR + len;
    bool wr = false;
    memset(buf, 0, NET_HDR);
    if (!vq_add(txq, &a, &l, &wr, 1, buf))
        tx_free[ntx_free++] = buf;
}

static void eth_hdr(u8 *f, const u8 *dst, u16 type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, mac, 6);
    put16(f + 12, type);
}

static void send_arp(u16 op, const u8 *tha_eth, const u8 *tha, u32 tpa)
{
    u8 *b = tx_get();
    if (!b)
        return;
    u8 *f = b + NET_HDR;
    static const u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    eth_hdr(f, tha_eth ? tha_eth : bcast, ETH_ARP);
    u8 *a = f + 14;                             /* RFC 826 */
    put16(a, 1);
    put16(a + 2, ETH_IP);
    a[4] = 6;
    a[5] = 4;
    put16(a + 6, op);
    memcpy(a + 8, mac, 6);
    put32(a + 14, my_ip);
    if (tha)
        memcpy(a + 18, tha, 6);
    else
        memset(a + 18, 0, 6);
    put32(a + 24, tpa);
    memset(f + 42, 0, 18);                      /* pad to 60 bytes */
    tx_send(b, 60);
}

/* IPv4 header (RFC 791) at f+14 for a payload of `plen` bytes. */
static void ip_hdr(u8 *ip, u8 proto, u32 dst, u32 plen)
{
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip + 2, (u16)(20 + plen));
    put16(ip + 4, ip_id++);
    put16(ip + 6, 0x4000);                      /* DF */
    ip[8] = 64;
    ip[9] = proto;
    put16(ip + 10, 0);
    put32(ip + 12, my_ip);
    put32(ip + 16, dst);
    put16(ip + 10, csum_fold(csum_add(0, ip, 20)));
}

static void fill_payload(u8 *p, u32 stream, u64 seq, u32 len)
{
    putle32(p, STREAM_MAGIC);
    putle32(p + 4, stream);
    putle32(p + 8, (u32)seq);
    putle32(p + 12, (u32)(seq >> 32));
    putle32(p + 16, len);
    u8 b = (u8)(STREAM_HDR + 13 * seq);
    for (u32 j = STREAM_HDR; j < len; j++)
        p[j] = b++;
    u32 crc = crc32_update(0, p, 20);
    putle32(p + 20, crc32_update(crc, p + STREAM_HDR, len - STREAM_HDR));
}

static bool send_datagram(void)
{
    u8 *b = tx_get();
    if (!b)
        return false;
    u8 *f = b + NET_HDR, *ip = f + 14, *udp = ip + 20, *p = udp + 8;
    eth_hdr(f, peer_mac, ETH_IP);
    fill_payload(p, tx_stream, tx_seq, size);
    ip_hdr(ip, 17, peer_ip, 8 + size);
    put16(udp, listen_port);
    put16(udp + 2, peer_port);
    put16(udp + 4, (u16)(8 + size));
    put16(udp + 6, 0);
    /* UDP checksum over the pseudo header (RFC 768) */
    u64 s = csum_add(0, ip + 12, 8) + 17 + 8 + size;
    u16 c = csum_fold(csum_add(s, udp, 8 + size));
    put16(udp + 6, c ? c : 0xffff);
    tx_send(b, 14 + 20 + 8 + size);
    tx_seq++;
    tx_pkts++;
    tx_bytes += size;
    return true;
}

/* ---- receive ---- */

static void report(const char *why, u64 seq, u32 stream)
{
    corrupt++;
    if (reports++ < MAX_REPORTS)
        uprintf("FERRY-CORRUPTION net seq=%llu stream=0x%x reason=%s\n", seq, stream, why);
}

static void rx_datagram(const u8 *p, u32 len)
{
    if (len < STREAM_HDR || le32(p) != STREAM_MAGIC) {
        report("magic", 0, 0);
        return;
    }
    u32 stream = le32(p + 4);
    u64 seq = le32(p + 8) | (u64)le32(p + 12) << 32;
    if (le32(p + 16) != len) {
        report("length", seq, stream);
        return;
    }
    u32 crc = crc32_update(crc32_update(0, p, 20), p + STREAM_HDR, len - STREAM_HDR);
    if (crc != le32(p + 20)) {
        report("crc", seq, stream);
        return;
    }
    u8 b = (u8)(STREAM_HDR + 13 * seq);
    for (u32 j = STREAM_HDR; j < len; j++, b++) {
        if (p[j] != b) {
            report("data", seq, stream);
            return;
        }
    }
    rx_pkts++;
    rx_bytes += len;
    if (!rx_have_stream || stream != rx_stream) {
        rx_have_stream = true;              /* a new stream: no loss for the jump */
        rx_stream = stream;
        rx_expect = seq + 1;
        return;
    }
    if (seq == rx_expect) {
        rx_expect++;
    } else if (seq > rx_expect) {
        lost += seq - rx_expect;
        rx_expect = seq + 1;
    } else {
        reorder++;
    }
}

static void rx_ip(const u8 *f, u32 len)
{
    const u8 *ip = f + 14;
    if (len < 34 || (ip[0] >> 4) != 4)
        return;
    u32 ihl = (ip[0] & 15) * 4u, tot = be16(ip + 2);
    if (ihl < 20 || tot < ihl || 14 + tot > len || be32(ip + 16) != my_ip)
        return;
    if (be16(ip + 6) & 0x3fff)
        return;                                 /* fragments: not handled */
    if (csum_fold(csum_add(0, ip, ihl)) != 0) {
        if (ip[9] == 17)
            report("ipcsum", 0, 0);
        return;
    }
    const u8 *l4 = ip + ihl;
    u32 l4len = tot - ihl;
    u32 src = be32(ip + 12);
    if (ip[9] == 1 && l4len >= 8 && l4[0] == 8) {    /* ICMP echo request, RFC 792 */
        u8 *b = tx_get();
        if (!b || l4len > BUF_SIZE - NET_HDR - 34) {
            if (b)
                tx_free[ntx_free++] = b;
            return;
        }
        u8 *o = b + NET_HDR;
        eth_hdr(o, f + 6, ETH_IP);
        ip_hdr(o + 14, 1, src, l4len);
        u8 *icmp = o + 34;
        memcpy(icmp, l4, l4len);
        icmp[0] = 0;
        put16(icmp + 2, 0);
        put16(icmp + 2, csum_fold(csum_add(0, icmp, l4len)));
        tx_send(b, 34 + l4len);
    } else if (ip[9] == 17 && l4len >= 8) {
        u32 ulen = be16(l4 + 4);
        if (be16(l4 + 2) != listen_port || ulen < 8 || ulen > l4len)
            return;
        if (be16(l4 + 6)) {
            u64 s = csum_add(0, ip + 12, 8) + 17 + ulen;
            if (csum_fold(csum_add(s, l4, ulen)) != 0) {
                report("udpcsum", 0, 0);
                return;
            }
        }
        rx_datagram(l4 + 8, ulen - 8);
    }
}

static void rx_arp(const u8 *f, u32 len)
{
    const u8 *a = f + 14;
    if (len < 42 || be16(a) != 1 || be16(a + 2) != ETH_IP || a[4] != 6 || a[5] != 4)
        return;
    u32 spa = be32(a + 14), tpa = be32(a + 24);
    if (have_peer && spa == peer_ip && !peer_known) {
        memcpy(peer_mac, a + 8, 6);
        peer_known = true;
        char ipb[16], mb[18];
        fmt_ip(ipb, peer_ip);
        fmt_mac(mb, peer_mac);
        if (!g_opt.quiet)
            uprintf("ferry-guest: net: peer %s is at %s\n", ipb, mb);
    }
    if (be16(a + 6) == 1 && tpa == my_ip)
        send_arp(2, a + 8, a + 8, spa);
}

static void rx_post(u8 *buf)
{
    u64 a = (u64)buf;
    u32 l = BUF_SIZE;
    bool wr = true;
    vq_add(rxq, &a, &l, &wr, 1, buf);
    rx_reposted = true;
}

void net_start(u64 now);
void net_start(u64 now)
{
    next_stats = now + NS_PER_S;
    next_arp = now;
    last_credit_ns = now;
    tx_stream = 0x47000000u | (u32)((now / NS_PER_MS) & 0xffffff);
}

void net_poll(u64 now)
{
    u8 *b;
    u32 len;

    if (!dev)
        return;
    for (u32 n = 0; n < 64 && (b = vq_get(rxq, &len)) != NULL; n++) {
        if (len > NET_HDR + 14) {
            u8 *f = b + NET_HDR;
            u32 fl = MIN(len, (u32)BUF_SIZE) - NET_HDR;
            u16 type = be16(f + 12);
            if (type == ETH_ARP)
                rx_arp(f, fl);
            else if (type == ETH_IP)
                rx_ip(f, fl);
        }
        rx_post(b);
    }
    if (rx_reposted) {
        rx_reposted = false;
        vq_kick(rxq);
    }
    tx_reclaim();
    if (have_peer && !peer_known && now >= next_arp) {
        send_arp(1, NULL, NULL, peer_ip);
        next_arp = now + NS_PER_S;
    }
    if (have_peer && peer_known) {
        if (rate_Bps) {
            credit += (now - last_credit_ns) * rate_Bps / NS_PER_S;
            credit = MIN(credit, MAX(rate_Bps / 100, 16ull * size));
        }
        last_credit_ns = now;
        for (u32 n = 0; n < 64; n++) {
            if (rate_Bps && credit < size)
                break;
            if (!send_datagram())
                break;
            if (rate_Bps)
                credit -= size;
        }
    }
    vq_kick(txq);
    if (now >= next_stats) {
        uprintf("FERRY-NET-STATS tx=%llu tx_mib=%llu rx=%llu rx_mib=%llu lost=%llu "
                "corrupt=%llu reorder=%llu irqs=%llu\n", tx_pkts, tx_bytes / MiB, rx_pkts,
                rx_bytes / MiB, lost, corrupt, reorder, virtio_irqs(dev));
        next_stats = MAX(next_stats + NS_PER_S, now);
    }
}

bool net_init(struct vdev *d)
{
    const char *c = g_shared.boot.cmdline;
    char buf[64];
    const char *r;

    if (!cmdline_str(c, "ferry.net.ip", buf, sizeof(buf)) || !(r = parse_ip(buf, &my_ip))) {
        uprintf("ferry-guest: ferry.net.ip must be a.b.c.d/prefix\n");
        return false;
    }
    prefix = *r == '/' ? parse_num(r + 1) : 24;
    if (cmdline_str(c, "ferry.net.peer", buf, sizeof(buf))) {
        r = parse_ip(buf, &peer_ip);
        if (!r || *r != ':') {
            uprintf("ferry-guest: ferry.net.peer must be a.b.c.d:port\n");
            return false;
        }
        peer_port = (u16)parse_num(r + 1);
        have_peer = true;
    }
    listen_port = (u16)cmdline_u64(c, "ferry.net.port", 5201);
    size = (u32)MIN(MAX(cmdline_u64(c, "ferry.net.size", 1400), (u64)STREAM_HDR), 1472ull);
    rate_Bps = cmdline_u64(c, "ferry.net.rate", 0) * 1000000 / 8;
    crc_init();

    if (!virtio_negotiate(d, 1ull << VIRTIO_NET_F_MAC))
        return false;
    if (d->features & (1ull << VIRTIO_NET_F_MAC)) {
        for (int i = 0; i < 6; i++)                 /* 5.1.4: mac[6] at offset 0 */
            mac[i] = d->devcfg[i];
    } else {
        static const u8 dflt[6] = { 0x52, 0x54, 0x00, 0xfe, 0x77, 0x02 };
        memcpy(mac, dflt, 6);
    }
    if (!virtio_setup_queue(d, RXQ, QSIZE) || !virtio_setup_queue(d, TXQ, QSIZE)) {
        uprintf("ferry-guest: virtio-net: queue setup failed\n");
        return false;
    }
    rxq = &d->vq[RXQ];
    txq = &d->vq[TXQ];
    rxq->irq_batch = (u16)MAX(rxq->size / 4, 1);
    txq->irq_batch = (u16)MAX(txq->size / 4, 1);
    for (u32 i = 0; i < txq->size; i++) {
        u8 *tb = dma_alloc(BUF_SIZE, 64);
        if (!tb)
            return false;
        tx_free[ntx_free++] = tb;
    }
    dev = d;
    for (u32 i = 0; i < rxq->size; i++) {
        u8 *rb = dma_alloc(BUF_SIZE, 64);
        if (!rb)
            return false;
        rx_post(rb);
    }
    virtio_driver_ok(d);        /* 3.1.1: buffers may be added before DRIVER_OK */
    vq_kick(rxq);
    rx_reposted = false;

    char mb[18], ipb[16];
    fmt_mac(mb, mac);
    fmt_ip(ipb, my_ip);
    if (!g_opt.quiet)
        uprintf("ferry-guest: virtio-net 00:%02x.%u negotiated 0x%llx, queues %u/%u\n",
                d->devfn >> 3, d->devfn & 7, d->features, rxq->size, txq->size);
    uprintf("FERRY-NET-READY mac=%s ip=%s/%u\n", mb, ipb, prefix);
    return true;
}
