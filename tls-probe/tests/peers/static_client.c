/* A TLS client with OpenSSL linked in statically (libssl.a + libcrypto.a): it connects to
 * 127.0.0.1:PORT, prints READY, then sends each stdin line with SSL_write and prints the
 * reply it reads with SSL_read. Plain blocking socket BIO, so the fd is known. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("connect");
        return 1;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        fprintf(stderr, "handshake failed\n");
        return 1;
    }
    printf("READY %d\n", fd);
    fflush(stdout);
    char line[256], reply[256];
    while (fgets(line, sizeof line, stdin)) {
        SSL_write(ssl, line, (int)strlen(line));
        int n = SSL_read(ssl, reply, sizeof reply - 1);
        if (n <= 0)
            break;
        reply[n] = 0;
        printf("REPLY %s", reply);
        fflush(stdout);
    }
    SSL_shutdown(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return 0;
}
