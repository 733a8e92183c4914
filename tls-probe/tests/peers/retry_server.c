/* A TLS server that misuses SSL_write on every connection it accepts, as retry_client.c
 * does on the client side: it writes 16 KiB chunks to a client that does not read until
 * SSL_write answers WANT_WRITE, then retries with another buffer; OpenSSL fails it with
 * "bad write retry" and the server drops the connection (SSL_free, close). A client that
 * reconnects at once makes connection churn out of it. Plain libssl (the system's), one
 * thread, one connection at a time.
 *
 *   usage   retry_server CERT KEY
 *   prints  PORT <port>                once it listens on 127.0.0.1 (a free port)
 *   then per connection, after the retry:
 *           RETRY <CLOCK_MONOTONIC ns just before the retry> <SSL_get_error> <reason>
 *   Runs until killed. Errors go to stderr with exit status 1. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char a[16384], b[16384];

static void fail(const char *what) {
    fprintf(stderr, "retry_server: %s failed\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static unsigned long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static int last_reason(void) {
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    return ERR_GET_REASON(last);
}

static void serve(SSL_CTX *ctx, int fd) {
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    SSL *ssl = SSL_new(ctx);
    if (!ssl || SSL_set_fd(ssl, fd) != 1)
        fail("SSL_new");
    if (SSL_accept(ssl) != 1) {
        /* The client went away during the handshake: next one. */
        ERR_clear_error();
        SSL_free(ssl);
        close(fd);
        return;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    for (;;) {
        int ret = SSL_write(ssl, a, sizeof a);
        if (ret > 0)
            continue;
        int code = SSL_get_error(ssl, ret);
        if (code == SSL_ERROR_WANT_WRITE)
            break;
        /* The client hung up first. */
        ERR_clear_error();
        SSL_free(ssl);
        close(fd);
        return;
    }
    /* The bug: the pending write retried with another buffer. */
    unsigned long long t = mono_ns();
    int ret = SSL_write(ssl, b, sizeof b);
    int code = ret > 0 ? 0 : SSL_get_error(ssl, ret);
    printf("RETRY %llu %d %d\n", t, code, last_reason());
    SSL_free(ssl);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 3)
        fail("usage: retry_server CERT KEY");
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(a, 'a', sizeof a);
    memset(b, 'b', sizeof b);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_use_certificate_chain_file(ctx, argv[1]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1)
        fail("loading the certificate");
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 16) != 0 ||
        getsockname(ls, (struct sockaddr *)&sa, &len) != 0)
        fail("listen");
    printf("PORT %d\n", ntohs(sa.sin_port));
    for (;;) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        int fd = accept(ls, (struct sockaddr *)&peer, &plen);
        if (fd < 0)
            fail("accept");
        serve(ctx, fd);
    }
}
