// Files.h — output files: every output of a run is declared and checked before any work, and
// written only when the run succeeds, whole or not at all; whole-file reads.
//
// What an output path may be, and what happens to it:
//   - a regular file (or nothing yet): the new contents go to a temporary beside it, which is
//     renamed over it; the new file keeps the old one's mode (and owner, when run as root). A
//     hard link is replaced like any file: the other names of the old file keep the old
//     contents.
//   - a symlink: followed (through any chain); its final target is what gets replaced, and
//     the link stays a link.
//   - a character or block device or a FIFO (/dev/null, /dev/stdout, a named pipe): opened
//     and written through, never replaced.
//   - a directory, a socket, a folder that does not exist or cannot be written: refused.
// Temporaries are named `.NAME.PID.N.tmp`, NAME cut so the whole stays within NAME_MAX.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <sys/types.h>
#include <vector>

namespace gradc {

/// Where an output goes, found and checked before any work.
struct OutputTarget {
    std::string path;          ///< as the user gave it, for messages
    std::string target;        ///< symlinks followed: the file replaced or written through
    bool exists = false;       ///< `target` exists (a regular file, a device or a FIFO)
    bool writeThrough = false; ///< a device or FIFO: opened and written, never replaced
    mode_t mode = 0;           ///< of the existing file
    uid_t uid = 0;
    gid_t gid = 0;
};

/// Checks an output path as described above; throws UserError naming it (`what`, such as
/// "the log file", says which output it is).
OutputTarget checkOutput(const std::string& path, const std::string& what = "");

/// Checks a folder that outputs will be created in (made, with its parents, when it does not
/// exist): it must be a writable folder, or its nearest existing ancestor must be one.
void checkOutputDirectory(const std::string& path, const std::string& what = "");

/// One output being written: to a temporary beside the target, renamed over it by commit(),
/// or straight to a device or FIFO. Destroyed uncommitted, it removes its temporary and the
/// target stays as it was. Every write is checked (UserError naming the path).
class PendingFile {
public:
    explicit PendingFile(OutputTarget target);
    ~PendingFile();
    PendingFile(const PendingFile&) = delete;
    PendingFile& operator=(const PendingFile&) = delete;

    void write(std::string_view bytes);
    /// Moves the temporary into place (with the old file's mode and owner).
    void commit();
    const OutputTarget& target() const { return t_; }
    /// The temporary's path (empty when writing through), for tests.
    const std::string& temporary() const { return tmp_; }

private:
    OutputTarget t_;
    std::string tmp_;
    int fd_ = -1;
    int slot_ = -1; ///< registerUnfinished's, while tmp_ is there
    bool committed_ = false;
};

/// The files a signal that ends the process must not leave behind (the temporaries of
/// PendingFile): registerUnfinished returns a slot (-1 when all
/// 64 are taken) for unregisterUnfinished; removeUnfinished() unlinks every registered file
/// and is async-signal-safe, for a SIGTERM handler.
int registerUnfinished(const std::string& path);
void unregisterUnfinished(int slot);
void removeUnfinished();

/// The output files of one run. A command declares its inputs and outputs before any work
/// (each output is checked at once, and no two outputs, nor an output and an input, may be
/// the same file), gives each output its contents as the run goes, and calls commit() when
/// it succeeds: every regular file's temporary is written first, then the devices, then the
/// temporaries are renamed into place. A run that fails (the set destroyed uncommitted)
/// leaves every existing file as it was and no temporary.
class OutputSet {
public:
    /// A file the run reads; no output may be it.
    void input(const std::string& path);
    /// An output file (checked now; an empty path is ignored). One given no contents is left
    /// alone by commit(): the command writes it itself (gradc train's --save, rewritten with
    /// writeFileAtomically whenever the best epoch improves).
    void output(const std::string& path, const std::string& what = "");
    /// A folder outputs are created in (checked now; an empty path is ignored).
    void directory(const std::string& path, const std::string& what = "");
    /// The contents of a declared output, written by commit().
    void set(const std::string& path, std::string bytes);
    /// A declared output written as the run goes (to its temporary), moved into place by
    /// commit().
    PendingFile& stream(const std::string& path);
    void commit();

private:
    struct Identity {
        bool exists = false;
        dev_t dev = 0;
        ino_t ino = 0;
        std::string resolved; ///< when it does not exist: its folder's real path and name
        bool operator==(const Identity& o) const;
    };
    static Identity identify(const std::string& path);
    void claim(const std::string& path, const std::string& what, const Identity& id, bool isOutput);
    struct Entry {
        OutputTarget target;
        std::optional<std::string> bytes;
        std::unique_ptr<PendingFile> file;
    };
    Entry& entry(const std::string& path);
    struct Claim {
        std::string path, what;
        Identity id;
        bool output = false;
    };
    std::vector<Entry> outputs_;
    std::vector<Claim> claimed_; ///< the inputs and outputs declared so far
};

/// Writes `bytes` to `path` as one output (checked, then written as OutputSet does): a failed
/// or interrupted write never leaves a half-written file. Throws UserError naming `path`.
void writeFileAtomically(const std::string& path, const std::string& bytes);

/// Reads a whole file; throws UserError naming it (`what` says what kind of file it is).
std::string readWholeFile(const std::string& path, const char* what);

} // namespace gradc
