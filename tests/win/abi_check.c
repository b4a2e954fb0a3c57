/* Prints the real layout of the structures and the values of the constants that
 * backends/_winapi.py declares, as seen by mingw-w64's <winsock2.h>, <mswsock.h>, <windows.h>.
 * test_winapi_abi.py runs it under the Windows interpreter and compares every line with cffi.
 * Build: x86_64-w64-mingw32-gcc -O1 -Wall -Werror -o abi_check.exe abi_check.c -lws2_32
 * Output: "sizeof NAME N", "offsetof NAME FIELD N", "const NAME N", one per line. */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mswsock.h>
#include <windows.h>
#include <stddef.h>
#include <stdio.h>

#define SIZE(t, name) printf("sizeof %s %u\n", name, (unsigned)sizeof(t))
#define OFF(t, name, f) printf("offsetof %s %s %u\n", name, #f, (unsigned)offsetof(t, f))
#define VALUE(c) printf("const %s %llu\n", #c, (unsigned long long)(c))

int main(void)
{
    SIZE(OVERLAPPED, "OVERLAPPED");
    OFF(OVERLAPPED, "OVERLAPPED", Internal);
    OFF(OVERLAPPED, "OVERLAPPED", InternalHigh);
    OFF(OVERLAPPED, "OVERLAPPED", Offset);
    OFF(OVERLAPPED, "OVERLAPPED", OffsetHigh);
    OFF(OVERLAPPED, "OVERLAPPED", Pointer);
    OFF(OVERLAPPED, "OVERLAPPED", hEvent);
    SIZE(OVERLAPPED_ENTRY, "OVERLAPPED_ENTRY");
    OFF(OVERLAPPED_ENTRY, "OVERLAPPED_ENTRY", lpCompletionKey);
    OFF(OVERLAPPED_ENTRY, "OVERLAPPED_ENTRY", lpOverlapped);
    OFF(OVERLAPPED_ENTRY, "OVERLAPPED_ENTRY", Internal);
    OFF(OVERLAPPED_ENTRY, "OVERLAPPED_ENTRY", dwNumberOfBytesTransferred);
    SIZE(WSABUF, "WSABUF");
    OFF(WSABUF, "WSABUF", len);
    OFF(WSABUF, "WSABUF", buf);
    SIZE(GUID, "GUID");
    OFF(GUID, "GUID", Data4);
    SIZE(struct sockaddr, "struct sockaddr");
    SIZE(struct in_addr, "struct in_addr");
    SIZE(struct sockaddr_in, "struct sockaddr_in");
    OFF(struct sockaddr_in, "struct sockaddr_in", sin_port);
    OFF(struct sockaddr_in, "struct sockaddr_in", sin_addr);
    SIZE(struct in6_addr, "struct in6_addr");
    SIZE(struct sockaddr_in6, "struct sockaddr_in6");
    OFF(struct sockaddr_in6, "struct sockaddr_in6", sin6_port);
    OFF(struct sockaddr_in6, "struct sockaddr_in6", sin6_flowinfo);
    OFF(struct sockaddr_in6, "struct sockaddr_in6", sin6_addr);
    OFF(struct sockaddr_in6, "struct sockaddr_in6", sin6_scope_id);
    SIZE(SOCKADDR_STORAGE, "SOCKADDR_STORAGE");
    SIZE(SOCKET, "SOCKET");
    SIZE(HANDLE, "HANDLE");
    SIZE(DWORD, "DWORD");
    SIZE(ULONG_PTR, "ULONG_PTR");
    SIZE(BOOL, "BOOL");

    VALUE(ERROR_HANDLE_EOF);
    VALUE(ERROR_NETNAME_DELETED);
    VALUE(ERROR_INVALID_PARAMETER);
    VALUE(WAIT_TIMEOUT);
    VALUE(ERROR_ABANDONED_WAIT_0);
    VALUE(ERROR_OPERATION_ABORTED);
    VALUE(ERROR_IO_PENDING);
    VALUE(ERROR_NOT_FOUND);
    VALUE(ERROR_CONNECTION_REFUSED);
    VALUE(ERROR_PORT_UNREACHABLE);
    VALUE(ERROR_CONNECTION_ABORTED);
    VALUE(WSAEINVAL);
    VALUE(WSAEMSGSIZE);
    VALUE(WSAECONNABORTED);
    VALUE(WSAECONNRESET);
    VALUE(WSAENOTCONN);
    VALUE(WSAESHUTDOWN);
    VALUE(WSAECONNREFUSED);
    VALUE(GENERIC_READ);
    VALUE(GENERIC_WRITE);
    VALUE(FILE_SHARE_READ);
    VALUE(FILE_SHARE_WRITE);
    VALUE(FILE_SHARE_DELETE);
    VALUE(CREATE_NEW);
    VALUE(CREATE_ALWAYS);
    VALUE(OPEN_EXISTING);
    VALUE(OPEN_ALWAYS);
    VALUE(TRUNCATE_EXISTING);
    VALUE(FILE_ATTRIBUTE_NORMAL);
    VALUE(FILE_FLAG_OVERLAPPED);
    VALUE(FILE_TYPE_UNKNOWN);
    VALUE(FILE_TYPE_DISK);
    VALUE(FILE_TYPE_CHAR);
    VALUE(FILE_TYPE_PIPE);
    VALUE(FILE_SKIP_COMPLETION_PORT_ON_SUCCESS);
    VALUE(FILE_SKIP_SET_EVENT_ON_HANDLE);
    VALUE(SOL_SOCKET);
    VALUE(SO_PROTOCOL_INFOW);
    VALUE(SO_UPDATE_ACCEPT_CONTEXT);
    VALUE(SO_UPDATE_CONNECT_CONTEXT);
    VALUE(SIO_GET_EXTENSION_FUNCTION_POINTER);
    VALUE(XP1_IFS_HANDLES);
    VALUE(INFINITE);
    printf("const INVALID_HANDLE_VALUE %llu\n", (unsigned long long)(ULONG_PTR)INVALID_HANDLE_VALUE);
    {
        GUID a = WSAID_ACCEPTEX, c = WSAID_CONNECTEX, g = WSAID_GETACCEPTEXSOCKADDRS;
        GUID *all[3] = {&a, &c, &g};
        const char *names[3] = {"WSAID_ACCEPTEX", "WSAID_CONNECTEX", "WSAID_GETACCEPTEXSOCKADDRS"};
        for (int i = 0; i < 3; i++) {
            printf("guid %s %lu %u %u", names[i], (unsigned long)all[i]->Data1,
                   all[i]->Data2, all[i]->Data3);
            for (int j = 0; j < 8; j++)
                printf(" %u", all[i]->Data4[j]);
            printf("\n");
        }
    }
    return 0;
}
