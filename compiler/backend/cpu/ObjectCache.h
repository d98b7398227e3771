// ObjectCache.h — the on-disk cache of compiled objects, one private folder per user.
//
// What it promises: code is loaded only from an entry that (1) sits in a folder owned by the
// effective user and writable by no one else, (2) is a regular file owned by that user and
// writable by no one else, reached without following a symbolic link, and (3) records the
// full key it was built from, equal byte for byte to the key asked for, with a matching
// checksum of the object. Anything else is a miss and the caller compiles afresh. Nothing
// here throws; a folder or entry that is unsafe is reported once per process on stderr.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

namespace gradc {

/// The cache folder when none is given: $GRADC_CACHE_DIR, else $XDG_CACHE_HOME/gradc, else
/// $HOME/.cache/gradc, else the passwd entry's home + /.cache/gradc (XDG_CACHE_HOME and HOME
/// count only when they are absolute paths). Empty when none of these can be had: the cache
/// never falls back to a shared folder such as /tmp.
std::string defaultCacheDir();

class ObjectCache {
public:
    /// Opens the folder `dir` (defaultCacheDir() when empty), creating it and its missing
    /// parents with mode 0700. A folder that cannot be had, is not owned by the effective
    /// user or is writable by group or others leaves the cache off (load misses, store does
    /// nothing), with a warning.
    explicit ObjectCache(std::string dir = {});
    ~ObjectCache();
    ObjectCache(const ObjectCache&) = delete;
    ObjectCache& operator=(const ObjectCache&) = delete;

    /// The object stored under `key` (the full text it was built from), or nothing: a missing,
    /// unsafe, stale, truncated or corrupt entry is a miss.
    std::optional<std::string> load(const std::string& key);
    /// Stores `object` under `key`: written 0600 to a fresh temporary file in the folder and
    /// renamed over the entry. Failure to store is no error (the next run compiles again).
    void store(const std::string& key, const std::string& object);

    /// The file `name` in the folder, read whole: nothing when it is missing, or (with a
    /// warning naming it as `what`, kept in problem()) when it is a symbolic link, not a
    /// regular file, not this user's or writable by others, larger than `maxBytes` or
    /// unreadable. Object entries and the register tile speeds (Codegen.cpp) both use it.
    std::optional<std::string> readFile(const std::string& name, const char* what, uint64_t maxBytes);
    /// Writes `parts`, one after the other, as the file `name`: to a fresh temporary file in
    /// the folder (0600, never through a symbolic link), renamed over `name`. False when it
    /// could not be written (no error: the cache is an optimisation).
    bool writeFile(const std::string& name, std::initializer_list<std::string_view> parts);

    bool enabled() const { return fd_ >= 0; }
    const std::string& dir() const { return dir_; }
    /// Why the folder or the last entry looked at was ignored; empty when nothing was wrong.
    const std::string& problem() const { return problem_; }
    /// The file name of the entry for `key`: the SHA-256 of the key in hex, then ".o".
    static std::string entryName(const std::string& key);

private:
    void open();
    void ignore(const std::string& path, const std::string& why);

    std::string dir_;
    int fd_ = -1; ///< the folder, opened once and checked; entries are reached through it
    std::string problem_;
};

} // namespace gradc
