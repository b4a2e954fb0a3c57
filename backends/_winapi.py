"""Windows declarations for the iocp backend: cffi in ABI mode, no compiler needed.

The ``cdef`` text below is kept close to Microsoft's prototypes (same names, same field order,
same typedefs), so it can be read side by side with the SDK headers; ``tests/win/abi_check.c``
prints the real sizes, offsets and constants from mingw-w64's headers and
``tests/win/test_winapi_abi.py`` compares them with what cffi computes here.

Only :mod:`portio.backends.iocp` imports this module, and only on Windows: cffi lays the
structures out for the interpreter that runs it (``DWORD`` is 4 bytes under Windows, while the
same text parsed on Linux would make ``unsigned long`` 8 bytes).
"""

from __future__ import annotations

import enum
import sys
from typing import Any, Protocol, cast

import cffi

if sys.platform != "win32":  # also tells mypy --platform linux/darwin to skip the rest
    raise ImportError("portio.backends._winapi needs Windows")

CDEF = r"""
typedef int BOOL;
typedef unsigned char UCHAR;
typedef unsigned short USHORT;
typedef unsigned short WORD;
typedef unsigned short ADDRESS_FAMILY;
typedef unsigned long DWORD;
typedef unsigned long ULONG;
typedef long LONG;
typedef int INT;
typedef char CHAR;
typedef wchar_t WCHAR;
typedef uintptr_t ULONG_PTR;
typedef void *PVOID;
typedef void *HANDLE;
typedef DWORD *LPDWORD;
typedef const WCHAR *LPCWSTR;
typedef uintptr_t SOCKET;

typedef struct _OVERLAPPED {
    ULONG_PTR Internal;
    ULONG_PTR InternalHigh;
    union {
        struct {
            DWORD Offset;
            DWORD OffsetHigh;
        };
        PVOID Pointer;
    };
    HANDLE hEvent;
} OVERLAPPED, *LPOVERLAPPED;

typedef struct _OVERLAPPED_ENTRY {
    ULONG_PTR lpCompletionKey;
    LPOVERLAPPED lpOverlapped;
    ULONG_PTR Internal;
    DWORD dwNumberOfBytesTransferred;
} OVERLAPPED_ENTRY, *LPOVERLAPPED_ENTRY;

typedef struct _WSABUF {
    ULONG len;
    CHAR *buf;
} WSABUF, *LPWSABUF;

typedef struct _GUID {
    unsigned long Data1;
    unsigned short Data2;
    unsigned short Data3;
    unsigned char Data4[8];
} GUID;

struct sockaddr {
    ADDRESS_FAMILY sa_family;
    CHAR sa_data[14];
};

struct in_addr {
    union {
        struct { UCHAR s_b1, s_b2, s_b3, s_b4; } S_un_b;
        struct { USHORT s_w1, s_w2; } S_un_w;
        ULONG S_addr;
    } S_un;
};

struct sockaddr_in {
    ADDRESS_FAMILY sin_family;
    USHORT sin_port;
    struct in_addr sin_addr;
    CHAR sin_zero[8];
};

struct in6_addr {
    union {
        UCHAR Byte[16];
        USHORT Word[8];
    } u;
};

struct sockaddr_in6 {
    ADDRESS_FAMILY sin6_family;
    USHORT sin6_port;
    ULONG sin6_flowinfo;
    struct in6_addr sin6_addr;
    ULONG sin6_scope_id;
};

typedef struct sockaddr_storage {
    ADDRESS_FAMILY ss_family;
    CHAR __ss_pad1[6];
    long long __ss_align;
    CHAR __ss_pad2[112];
} SOCKADDR_STORAGE;

/* kernel32 */
HANDLE CreateIoCompletionPort(HANDLE FileHandle, HANDLE ExistingCompletionPort,
                              ULONG_PTR CompletionKey, DWORD NumberOfConcurrentThreads);
BOOL GetQueuedCompletionStatus(HANDLE CompletionPort, LPDWORD lpNumberOfBytesTransferred,
                               ULONG_PTR *lpCompletionKey, LPOVERLAPPED *lpOverlapped,
                               DWORD dwMilliseconds);
BOOL GetQueuedCompletionStatusEx(HANDLE CompletionPort, LPOVERLAPPED_ENTRY lpCompletionPortEntries,
                                 ULONG ulCount, ULONG *ulNumEntriesRemoved,
                                 DWORD dwMilliseconds, BOOL fAlertable);
BOOL PostQueuedCompletionStatus(HANDLE CompletionPort, DWORD dwNumberOfBytesTransferred,
                                ULONG_PTR dwCompletionKey, LPOVERLAPPED lpOverlapped);
BOOL CancelIoEx(HANDLE hFile, LPOVERLAPPED lpOverlapped);
BOOL SetFileCompletionNotificationModes(HANDLE FileHandle, UCHAR Flags);
HANDLE CreateFileW(LPCWSTR lpFileName, DWORD dwDesiredAccess, DWORD dwShareMode,
                   void *lpSecurityAttributes, DWORD dwCreationDisposition,
                   DWORD dwFlagsAndAttributes, HANDLE hTemplateFile);
BOOL ReadFile(HANDLE hFile, void *lpBuffer, DWORD nNumberOfBytesToRead,
              LPDWORD lpNumberOfBytesRead, LPOVERLAPPED lpOverlapped);
BOOL WriteFile(HANDLE hFile, const void *lpBuffer, DWORD nNumberOfBytesToWrite,
               LPDWORD lpNumberOfBytesWritten, LPOVERLAPPED lpOverlapped);
BOOL GetOverlappedResult(HANDLE hFile, LPOVERLAPPED lpOverlapped,
                         LPDWORD lpNumberOfBytesTransferred, BOOL bWait);
BOOL CloseHandle(HANDLE hObject);
HANDLE CreateEventW(void *lpEventAttributes, BOOL bManualReset, BOOL bInitialState,
                    LPCWSTR lpName);
DWORD GetFileType(HANDLE hFile);
DWORD GetLastError(void);

/* ntdll: what GetOverlappedResult does to OVERLAPPED.Internal, without needing the handle
   (which close_handle may already have closed when a cancelled operation's packet arrives) */
ULONG RtlNtStatusToDosError(LONG Status);

/* ws2_32 */
typedef void *LPWSAOVERLAPPED_COMPLETION_ROUTINE;
int WSARecv(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount, LPDWORD lpNumberOfBytesRecvd,
            LPDWORD lpFlags, LPOVERLAPPED lpOverlapped,
            LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
int WSASend(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount, LPDWORD lpNumberOfBytesSent,
            DWORD dwFlags, LPOVERLAPPED lpOverlapped,
            LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
int WSARecvFrom(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount,
                LPDWORD lpNumberOfBytesRecvd, LPDWORD lpFlags, struct sockaddr *lpFrom,
                INT *lpFromlen, LPOVERLAPPED lpOverlapped,
                LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
int WSASendTo(SOCKET s, LPWSABUF lpBuffers, DWORD dwBufferCount, LPDWORD lpNumberOfBytesSent,
              DWORD dwFlags, const struct sockaddr *lpTo, int iTolen,
              LPOVERLAPPED lpOverlapped, LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
int WSAIoctl(SOCKET s, DWORD dwIoControlCode, void *lpvInBuffer, DWORD cbInBuffer,
             void *lpvOutBuffer, DWORD cbOutBuffer, LPDWORD lpcbBytesReturned,
             LPOVERLAPPED lpOverlapped, LPWSAOVERLAPPED_COMPLETION_ROUTINE lpCompletionRoutine);
BOOL WSAGetOverlappedResult(SOCKET s, LPOVERLAPPED lpOverlapped, LPDWORD lpcbTransfer,
                            BOOL fWait, LPDWORD lpdwFlags);
int setsockopt(SOCKET s, int level, int optname, const char *optval, int optlen);
int closesocket(SOCKET s);
int WSAGetLastError(void);

/* mswsock extension functions, reached through WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER) */
typedef BOOL (*LPFN_ACCEPTEX)(SOCKET sListenSocket, SOCKET sAcceptSocket, PVOID lpOutputBuffer,
                              DWORD dwReceiveDataLength, DWORD dwLocalAddressLength,
                              DWORD dwRemoteAddressLength, LPDWORD lpdwBytesReceived,
                              LPOVERLAPPED lpOverlapped);
typedef BOOL (*LPFN_CONNECTEX)(SOCKET s, const struct sockaddr *name, int namelen,
                               PVOID lpSendBuffer, DWORD dwSendDataLength,
                               LPDWORD lpdwBytesSent, LPOVERLAPPED lpOverlapped);
typedef void (*LPFN_GETACCEPTEXSOCKADDRS)(PVOID lpOutputBuffer, DWORD dwReceiveDataLength,
                                          DWORD dwLocalAddressLength,
                                          DWORD dwRemoteAddressLength,
                                          struct sockaddr **LocalSockaddr, INT *LocalSockaddrLength,
                                          struct sockaddr **RemoteSockaddr,
                                          INT *RemoteSockaddrLength);
"""


class Kernel32(Protocol):
    """The kernel32.dll functions declared in :data:`CDEF` (arguments are cffi cdata)."""

    def CreateIoCompletionPort(self, FileHandle: Any, ExistingCompletionPort: Any,
                               CompletionKey: int, NumberOfConcurrentThreads: int) -> Any: ...
    def GetQueuedCompletionStatus(self, CompletionPort: Any, lpNumberOfBytesTransferred: Any,
                                  lpCompletionKey: Any, lpOverlapped: Any,
                                  dwMilliseconds: int) -> int: ...
    def GetQueuedCompletionStatusEx(self, CompletionPort: Any, lpCompletionPortEntries: Any,
                                    ulCount: int, ulNumEntriesRemoved: Any,
                                    dwMilliseconds: int, fAlertable: int) -> int: ...
    def PostQueuedCompletionStatus(self, CompletionPort: Any, dwNumberOfBytesTransferred: int,
                                   dwCompletionKey: int, lpOverlapped: Any) -> int: ...
    def CancelIoEx(self, hFile: Any, lpOverlapped: Any) -> int: ...
    def SetFileCompletionNotificationModes(self, FileHandle: Any, Flags: int) -> int: ...
    def CreateFileW(self, lpFileName: Any, dwDesiredAccess: int, dwShareMode: int,
                    lpSecurityAttributes: Any, dwCreationDisposition: int,
                    dwFlagsAndAttributes: int, hTemplateFile: Any) -> Any: ...
    def ReadFile(self, hFile: Any, lpBuffer: Any, nNumberOfBytesToRead: int,
                 lpNumberOfBytesRead: Any, lpOverlapped: Any) -> int: ...
    def WriteFile(self, hFile: Any, lpBuffer: Any, nNumberOfBytesToWrite: int,
                  lpNumberOfBytesWritten: Any, lpOverlapped: Any) -> int: ...
    def GetOverlappedResult(self, hFile: Any, lpOverlapped: Any,
                            lpNumberOfBytesTransferred: Any, bWait: int) -> int: ...
    def CloseHandle(self, hObject: Any) -> int: ...
    def CreateEventW(self, lpEventAttributes: Any, bManualReset: int, bInitialState: int,
                     lpName: Any) -> Any: ...
    def GetFileType(self, hFile: Any) -> int: ...
    def GetLastError(self) -> int: ...


class Ntdll(Protocol):
    """The ntdll.dll function declared in :data:`CDEF`."""

    def RtlNtStatusToDosError(self, Status: int) -> int: ...


class Ws2_32(Protocol):
    """The ws2_32.dll functions declared in :data:`CDEF` (arguments are cffi cdata)."""

    def WSARecv(self, s: int, lpBuffers: Any, dwBufferCount: int, lpNumberOfBytesRecvd: Any,
                lpFlags: Any, lpOverlapped: Any, lpCompletionRoutine: Any) -> int: ...
    def WSASend(self, s: int, lpBuffers: Any, dwBufferCount: int, lpNumberOfBytesSent: Any,
                dwFlags: int, lpOverlapped: Any, lpCompletionRoutine: Any) -> int: ...
    def WSARecvFrom(self, s: int, lpBuffers: Any, dwBufferCount: int,
                    lpNumberOfBytesRecvd: Any, lpFlags: Any, lpFrom: Any, lpFromlen: Any,
                    lpOverlapped: Any, lpCompletionRoutine: Any) -> int: ...
    def WSASendTo(self, s: int, lpBuffers: Any, dwBufferCount: int, lpNumberOfBytesSent: Any,
                  dwFlags: int, lpTo: Any, iTolen: int, lpOverlapped: Any,
                  lpCompletionRoutine: Any) -> int: ...
    def WSAIoctl(self, s: int, dwIoControlCode: int, lpvInBuffer: Any, cbInBuffer: int,
                 lpvOutBuffer: Any, cbOutBuffer: int, lpcbBytesReturned: Any,
                 lpOverlapped: Any, lpCompletionRoutine: Any) -> int: ...
    def WSAGetOverlappedResult(self, s: int, lpOverlapped: Any, lpcbTransfer: Any,
                               fWait: int, lpdwFlags: Any) -> int: ...
    def setsockopt(self, s: int, level: int, optname: int, optval: Any, optlen: int) -> int: ...
    def closesocket(self, s: int) -> int: ...
    def WSAGetLastError(self) -> int: ...


class Error(enum.IntEnum):
    """Win32 and Winsock error codes the backend compares against."""

    ERROR_SUCCESS = 0
    ERROR_INVALID_HANDLE = 6
    ERROR_HANDLE_EOF = 38
    ERROR_NETNAME_DELETED = 64
    ERROR_INVALID_PARAMETER = 87
    WAIT_TIMEOUT = 258
    ERROR_ABANDONED_WAIT_0 = 735     # Windows: GQCS on a port closed under it
    ERROR_OPERATION_ABORTED = 995    # the I/O was cancelled (CancelIoEx, thread exit, close)
    ERROR_IO_PENDING = 997
    ERROR_NOT_FOUND = 1168           # CancelIoEx: nothing pending with that OVERLAPPED
    ERROR_CONNECTION_REFUSED = 1225
    ERROR_PORT_UNREACHABLE = 1234
    ERROR_CONNECTION_ABORTED = 1236
    # Wine 8 completes a recv pending at closesocket() with this code (Windows: 995).
    WINE_ERROR_CLOSED = 676
    WSAEINVAL = 10022
    WSAEMSGSIZE = 10040
    WSAECONNABORTED = 10053
    WSAECONNRESET = 10054
    WSAENOTCONN = 10057
    WSAESHUTDOWN = 10058
    WSAECONNREFUSED = 10061


#: Completion codes that mean "the operation was cancelled" (Windows and Wine spellings).
ABORTED = frozenset({Error.ERROR_OPERATION_ABORTED, Error.WINE_ERROR_CLOSED})


class Access(enum.IntFlag):
    """``dwDesiredAccess`` for CreateFileW."""

    GENERIC_READ = 0x80000000
    GENERIC_WRITE = 0x40000000


class Share(enum.IntFlag):
    """``dwShareMode`` for CreateFileW."""

    FILE_SHARE_READ = 0x1
    FILE_SHARE_WRITE = 0x2
    FILE_SHARE_DELETE = 0x4


class Disposition(enum.IntEnum):
    """``dwCreationDisposition`` for CreateFileW."""

    CREATE_NEW = 1
    CREATE_ALWAYS = 2
    OPEN_EXISTING = 3
    OPEN_ALWAYS = 4
    TRUNCATE_EXISTING = 5


class FileFlags(enum.IntFlag):
    """``dwFlagsAndAttributes`` for CreateFileW."""

    FILE_ATTRIBUTE_NORMAL = 0x80
    FILE_FLAG_OVERLAPPED = 0x40000000


class FileType(enum.IntEnum):
    """What GetFileType says a HANDLE is (FILE_TYPE_UNKNOWN also for an invalid handle)."""

    FILE_TYPE_UNKNOWN = 0x0
    FILE_TYPE_DISK = 0x1
    FILE_TYPE_CHAR = 0x2
    FILE_TYPE_PIPE = 0x3     # also what a socket is


class CompletionModes(enum.IntFlag):
    """Flags for SetFileCompletionNotificationModes."""

    FILE_SKIP_COMPLETION_PORT_ON_SUCCESS = 0x1
    FILE_SKIP_SET_EVENT_ON_HANDLE = 0x2


class SockOpt(enum.IntEnum):
    """Winsock socket options and ioctls used by the backend."""

    SOL_SOCKET = 0xFFFF
    SO_PROTOCOL_INFOW = 0x2005
    SO_UPDATE_ACCEPT_CONTEXT = 0x700B
    SO_UPDATE_CONNECT_CONTEXT = 0x7010
    SIO_GET_EXTENSION_FUNCTION_POINTER = 0xC8000006


class ServiceFlags(enum.IntFlag):
    """``WSAPROTOCOL_INFOW.dwServiceFlags1`` bits."""

    XP1_IFS_HANDLES = 0x20000    # the provider's sockets are real kernel file handles


#: INVALID_HANDLE_VALUE, as the integer a HANDLE cdata casts to.
INVALID_HANDLE_VALUE = (1 << 64) - 1 if sys.maxsize > 2**32 else (1 << 32) - 1
#: ``dwMilliseconds`` meaning "wait forever".
INFINITE = 0xFFFFFFFF

#: GUIDs of the mswsock extension functions, as (Data1, Data2, Data3, Data4).
WSAID_ACCEPTEX = (0xB5367DF1, 0xCBAC, 0x11CF, (0x95, 0xCA, 0x00, 0x80, 0x5F, 0x48, 0xA1, 0x92))
WSAID_CONNECTEX = (0x25A207B9, 0xDDF3, 0x4660, (0x8E, 0xE9, 0x76, 0xE5, 0x8C, 0x74, 0x06, 0x3E))
WSAID_GETACCEPTEXSOCKADDRS = (
    0xB5367DF2, 0xCBAC, 0x11CF, (0x95, 0xCA, 0x00, 0x80, 0x5F, 0x48, 0xA1, 0x92)
)

ffi = cffi.FFI()
ffi.cdef(CDEF)


class Dlls:
    """The loaded DLLs, typed."""

    def __init__(self) -> None:
        import socket  # noqa: F401  (initialises Winsock: WSAStartup runs when _socket loads)

        self.kernel32 = cast(Kernel32, ffi.dlopen("kernel32.dll"))
        self.ws2_32 = cast(Ws2_32, ffi.dlopen("ws2_32.dll"))
        self.ntdll = cast(Ntdll, ffi.dlopen("ntdll.dll"))


def load() -> Dlls:
    """Load kernel32, ws2_32 and ntdll (Windows only; raises OSError elsewhere)."""
    return Dlls()


def last_error() -> int:
    """``GetLastError()`` as cffi saved it right after the most recent C call in this thread
    (calling GetLastError through cffi could see a value the interpreter set in between)."""
    saved = ffi.getwinerror()
    assert saved is not None  # only None off Windows
    return int(saved[0])


# Win32 codes whose CPython errno mapping would lose the contract's exception type: each is
# reported as the Winsock code of the same meaning, so OSError picks the right subclass.
_AS_WINSOCK: dict[int, int] = {
    Error.ERROR_NETNAME_DELETED: Error.WSAECONNRESET,
    Error.ERROR_PORT_UNREACHABLE: Error.WSAECONNRESET,
    Error.ERROR_CONNECTION_REFUSED: Error.WSAECONNREFUSED,
    Error.ERROR_CONNECTION_ABORTED: Error.WSAECONNABORTED,
}


def error_message(winerror: int) -> str:
    """The system's text for a Windows error code."""
    if sys.platform == "win32":
        import ctypes

        text = ctypes.FormatError(winerror).strip()
        if text and "<no description>" not in text:
            return text
    return f"Windows error {winerror}"


def winerror_to_oserror(winerror: int) -> OSError:
    """Turn a Windows error code into ``OSError(None, msg, None, winerror)``.

    On Windows CPython derives ``errno`` from ``winerror`` and picks the subclass
    (``ConnectionResetError`` for 10054, ...). A few Win32 codes that IOCP reports for socket
    failures are first translated to their Winsock twins so the subclass is the contract's one.
    Callers check :data:`ABORTED` themselves (cancellation becomes the operation's own error).
    """
    code = _AS_WINSOCK.get(winerror, winerror)
    return OSError(None, error_message(winerror), None, code)
