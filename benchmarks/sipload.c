/* Closed-loop SIP load generator for benchmarks/bench_sip.py (loopback, UDP).
 *
 * usage: sipload HOST PORT WINDOW SECONDS PREFIX
 * Keeps WINDOW INVITEs outstanding, each with a unique Call-ID PREFIX-N, sends a new one
 * for every reply, for SECONDS. A request whose reply does not come within 200 ms is
 * counted as lost and replaced, so loss shows instead of stalling the window. After the
 * run it waits up to 1 s for late replies. Prints: sent=N replies=N lost=N seconds=S
 */
#include <arpa/inet.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: sipload HOST PORT WINDOW SECONDS PREFIX\n");
		return 2;
	}
	int window = atoi(argv[3]);
	double seconds = atof(argv[4]);
	const char *prefix = argv[5];
	struct sockaddr_in dst = {0}, me = {0};
	dst.sin_family = AF_INET;
	dst.sin_port = htons(atoi(argv[2]));
	inet_pton(AF_INET, argv[1], &dst.sin_addr);
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	me.sin_family = AF_INET;
	inet_pton(AF_INET, "127.0.0.1", &me.sin_addr);
	socklen_t len = sizeof me;
	if (s < 0 || bind(s, (struct sockaddr *)&me, sizeof me) < 0
			|| getsockname(s, (struct sockaddr *)&me, &len) < 0
			|| connect(s, (struct sockaddr *)&dst, sizeof dst) < 0) {
		perror("socket");
		return 1;
	}
	int myport = ntohs(me.sin_port);
	long sent = 0, replies = 0, lost = 0;
	char msg[1024], buf[65536];
	double start = now(), last_reply = start;
	int outstanding = 0;
	for (;;) {
		double t = now();
		int running = t - start < seconds;
		if (running) {
			if (outstanding > 0 && t - last_reply > 0.2) {   /* replies stopped coming */
				lost += outstanding;
				outstanding = 0;
				last_reply = t;
			}
			while (outstanding < window) {
				int n = snprintf(msg, sizeof msg,
					"INVITE sip:bob@%s:%s SIP/2.0\r\n"
					"Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-%s-%ld\r\n"
					"From: \"Load\" <sip:load@example.com>;tag=lt%ld\r\n"
					"To: <sip:bob@example.org>\r\n"
					"Call-ID: %s-%ld\r\n"
					"CSeq: 1 INVITE\r\n"
					"Max-Forwards: 70\r\n"
					"Content-Length: 0\r\n\r\n",
					argv[1], argv[2], myport, prefix, sent, sent, prefix, sent);
				if (send(s, msg, n, 0) < 0) {
					perror("send");
					return 1;
				}
				sent++;
				outstanding++;
			}
		} else if (outstanding <= 0 || t - last_reply > 1.0) {
			break;
		}
		struct pollfd p = {s, POLLIN, 0};
		if (poll(&p, 1, 50) > 0) {
			while (recv(s, buf, sizeof buf, MSG_DONTWAIT) > 0) {
				replies++;
				outstanding--;
				last_reply = now();
			}
		}
	}
	if (outstanding > 0)
		lost += outstanding;
	printf("sent=%ld replies=%ld lost=%ld seconds=%.3f\n", sent, replies, lost, seconds);
	return 0;
}
