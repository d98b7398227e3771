// CacheTests.cpp — the object cache as a hostile user would meet it: entries planted under
// another model's name, folders and entries others can write or own, entries that are
// directories, FIFOs or symbolic links; and where the folder is and how it is created.
// (The hit, miss and corruption paths are in JitTests.cpp.)
#include "Codegen.h"
#include "Execute.h"
#include "ObjectCache.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <future>
#include <pwd.h>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>

using namespace gradc;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

void writeBytes(const fs::path& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary | std::ios::trunc) << bytes;
    fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write);
}

/// The compiled objects in `dir` (the folder also keeps the register tiles' speeds).
std::vector<fs::path> entries(const fs::path& dir) {
    std::vector<fs::path> out;
    for (auto& e : fs::directory_iterator(dir))
        if (e.path().filename() != "gemm-tiles.txt") out.push_back(e.path());
    return out;
}

mode_t modeOf(const fs::path& p) {
    struct stat st;
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

uid_t ownerOf(const fs::path& p) {
    struct stat st;
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st.st_uid;
}

/// A small model, compiled with the cache in `dir`; its loss is checked against the
/// interpreter, so loading another model's code could not pass unnoticed.
struct Victim {
    Graph fwd;
    Bindings b;
    double want;
    CodegenOptions opts;
    explicit Victim(const std::string& dir, const char* act = "tanh")
        : fwd(compileSource("victim.nn", std::string("input 6\ndense 5 ") + act + "\ndense 3\nloss cross_entropy\n", {4})
                  .graph) {
        std::mt19937 rng(21);
        b = randomBindings(fwd, rng);
        want = interpretOutputs(fwd, b).at("loss").data[0];
        opts.cacheDir = dir;
    }
    CompiledModel compile() const {
        CompiledModel cm = compileModel(fwd, opts);
        CHECK(runCompiled(cm, fwd, b, false).at("loss").data[0] == Approx(want).epsilon(1e-5));
        return cm;
    }
};

bool isRoot() { return ::geteuid() == 0; }

uid_t nobody() {
    struct passwd* pw = ::getpwnam("nobody");
    REQUIRE(pw != nullptr);
    return pw->pw_uid;
}

} // namespace

TEST_CASE("a planted entry holding another model's object under the victim's name is rejected and rebuilt",
          "[cache]") {
    TempDir victimDir, attackerDir;
    Victim victim(victimDir.path.string()), attacker(attackerDir.path.string(), "sigmoid");
    CHECK_FALSE(attacker.compile().cacheHit);
    CHECK_FALSE(victim.compile().cacheHit);
    auto planted = entries(attackerDir.path), target = entries(victimDir.path);
    REQUIRE(planted.size() == 1);
    REQUIRE(target.size() == 1);
    // The attacker's entry is well formed (magic, sizes, checksum of its object) and is put
    // under the name the victim's key hashes to, owned by the victim and mode 0600: only the
    // full key it records tells it apart.
    const std::string evil = readFile(planted[0]), good = readFile(target[0]);
    REQUIRE(evil != good);
    writeBytes(target[0], evil);
    CompiledModel cm = victim.compile(); // the loss check fails if the attacker's code ran
    CHECK_FALSE(cm.cacheHit);
    CHECK_THAT(cm.cacheProblem, Contains(target[0].filename().string()) && Contains("built from another key"));
    CHECK(readFile(target[0]) == good); // rebuilt and stored again
    CHECK(victim.compile().cacheHit);
}

TEST_CASE("a cache folder writable by group or others, or owned by another user, is not used", "[cache]") {
    TempDir dir;
    Victim victim(dir.path.string());
    CHECK_FALSE(victim.compile().cacheHit);
    REQUIRE(entries(dir.path).size() == 1);
    const fs::path entry = entries(dir.path)[0];
    const std::string good = readFile(entry);

    auto ignored = [&](const std::string& why) {
        fs::remove(entry);
        CompiledModel cm = victim.compile();
        CHECK_FALSE(cm.cacheHit);
        CHECK_THAT(cm.cacheProblem, Contains(dir.path.string()) && Contains(why) && Contains("without the cache"));
        CHECK(entries(dir.path).empty()); // nothing written there either
        writeBytes(entry, good);
        cm = victim.compile(); // a good entry is not read from such a folder
        CHECK_FALSE(cm.cacheHit);
        CHECK_THAT(cm.cacheProblem, Contains(why));
    };
    ::chmod(dir.path.c_str(), 0770);
    ignored("writable by its group (mode 0770)");
    ::chmod(dir.path.c_str(), 0703);
    ignored("writable by others (mode 0703)");
    ::chmod(dir.path.c_str(), 01777); // as /tmp is
    ignored("writable by others (mode 1777)");
    ::chmod(dir.path.c_str(), 0700);
    if (isRoot()) { // CI runs the tests as root
        REQUIRE(::chown(dir.path.c_str(), nobody(), gid_t(-1)) == 0);
        ignored(fmt::format("is owned by uid {}, not by this user (uid 0)", nobody()));
        REQUIRE(::chown(dir.path.c_str(), 0, gid_t(-1)) == 0);
    } else {
        WARN("not root: the folder owned by another user is checked only when the tests run as root");
    }
    CompiledModel cm = victim.compile();
    CHECK(cm.cacheHit);
    CHECK(cm.cacheProblem.empty());
}

TEST_CASE("a cache entry writable by group or others, or owned by another user, is ignored and rebuilt", "[cache]") {
    TempDir dir;
    Victim victim(dir.path.string());
    CHECK_FALSE(victim.compile().cacheHit);
    const fs::path entry = entries(dir.path).at(0);
    auto ignored = [&](const std::string& why) {
        CompiledModel cm = victim.compile();
        CHECK_FALSE(cm.cacheHit);
        CHECK_THAT(cm.cacheProblem, Contains(entry.string()) && Contains(why));
        // Replaced by a fresh entry: the user's own, mode 0600, and used next time.
        CHECK(ownerOf(entry) == ::geteuid());
        CHECK(modeOf(entry) == 0600);
        CHECK(victim.compile().cacheHit);
    };
    ::chmod(entry.c_str(), 0666);
    ignored("writable by others (mode 0666)");
    ::chmod(entry.c_str(), 0620);
    ignored("writable by its group (mode 0620)");
    if (isRoot()) {
        REQUIRE(::chown(entry.c_str(), nobody(), gid_t(-1)) == 0);
        ignored(fmt::format("is owned by uid {}, not by this user (uid 0)", nobody()));
    } else {
        WARN("not root: the entry owned by another user is checked only when the tests run as root");
    }
}

TEST_CASE("cache entries that are directories, symbolic links or FIFOs are ignored, never followed or waited on",
          "[cache]") {
    TempDir dir;
    Victim victim(dir.path.string());
    CHECK_FALSE(victim.compile().cacheHit);
    const fs::path entry = entries(dir.path).at(0);
    const std::string good = readFile(entry);

    SECTION("a directory") {
        fs::remove(entry);
        fs::create_directory(entry);
        for (int run = 0; run < 2; ++run) { // it stays a directory: never a crash
            CompiledModel cm = victim.compile();
            CHECK_FALSE(cm.cacheHit);
            CHECK_THAT(cm.cacheProblem, Contains("the cache entry is a directory; ignored"));
        }
    }
    SECTION("a symbolic link to a good entry") {
        const fs::path copy = dir.path / "copy.o";
        writeBytes(copy, good);
        fs::remove(entry);
        fs::create_symlink(copy, entry);
        CompiledModel cm = victim.compile();
        CHECK_FALSE(cm.cacheHit);
        CHECK_THAT(cm.cacheProblem, Contains("the cache entry is a symbolic link; ignored"));
        CHECK(readFile(copy) == good); // the link was replaced, its target left alone
        CHECK_FALSE(fs::is_symlink(entry));
        CHECK(victim.compile().cacheHit);
    }
    SECTION("a FIFO") {
        fs::remove(entry);
        REQUIRE(::mkfifo(entry.c_str(), 0600) == 0);
        // Compiled on another thread, given a minute; if it waits on the FIFO, a writer that
        // opens and closes it lets it go, and the test fails instead of hanging.
        std::promise<CompiledModel> done;
        auto result = done.get_future();
        std::thread worker([&] {
            try {
                done.set_value(compileModel(victim.fwd, victim.opts));
            } catch (...) {
                done.set_exception(std::current_exception());
            }
        });
        const bool finished = result.wait_for(std::chrono::seconds(60)) == std::future_status::ready;
        if (!finished)
            if (int fd = ::open(entry.c_str(), O_WRONLY | O_NONBLOCK); fd >= 0) ::close(fd);
        worker.join();
        REQUIRE(finished);
        CompiledModel cm = result.get();
        CHECK_FALSE(cm.cacheHit);
        CHECK_THAT(cm.cacheProblem, Contains("the cache entry is a FIFO; ignored"));
        CHECK(fs::is_regular_file(fs::symlink_status(entry))); // replaced by a good entry
        CHECK(victim.compile().cacheHit);
    }
}

TEST_CASE("the cache folder: GRADC_CACHE_DIR, else XDG_CACHE_HOME, else HOME, else the passwd home, never /tmp",
          "[cache]") {
    struct passwd* pw = ::getpwuid(::geteuid());
    REQUIRE(pw != nullptr);
    const std::string passwdCache = std::string(pw->pw_dir) + "/.cache/gradc";
    {
        EnvVar a("GRADC_CACHE_DIR", nullptr), b("XDG_CACHE_HOME", nullptr), c("HOME", nullptr);
        CHECK(defaultCacheDir() == passwdCache);
        CHECK(defaultCacheDir().rfind("/tmp", 0) != 0);
        EnvVar d("HOME", "/home/someone");
        CHECK(defaultCacheDir() == "/home/someone/.cache/gradc");
        EnvVar e("XDG_CACHE_HOME", "relative/paths/are/ignored");
        CHECK(defaultCacheDir() == "/home/someone/.cache/gradc");
        EnvVar f("XDG_CACHE_HOME", "/var/cache/someone");
        CHECK(defaultCacheDir() == "/var/cache/someone/gradc");
        EnvVar g("GRADC_CACHE_DIR", "/srv/gradc-objects");
        CHECK(defaultCacheDir() == "/srv/gradc-objects");
    }
    TempDir dir;
    const fs::path chosen = dir.path / "chosen";
    EnvVar env("GRADC_CACHE_DIR", chosen.c_str());
    Victim victim(""); // no folder given: the default, GRADC_CACHE_DIR
    CHECK_FALSE(victim.compile().cacheHit);
    CHECK(entries(chosen).size() == 1);
    CHECK(victim.compile().cacheHit);
}

TEST_CASE("the cache folder and its missing parents are created 0700 and entries 0600, whatever the umask",
          "[cache]") {
    TempDir dir;
    const fs::path folder = dir.path / "a" / "b" / "gradc";
    const mode_t saved = ::umask(0);
    Victim victim(folder.string());
    CompiledModel cm = victim.compile();
    ::umask(saved);
    CHECK_FALSE(cm.cacheHit);
    CHECK(cm.cacheProblem.empty());
    for (const fs::path& p : {dir.path / "a", dir.path / "a" / "b", folder}) {
        INFO(p);
        CHECK(modeOf(p) == 0700);
    }
    auto made = entries(folder);
    REQUIRE(made.size() == 1); // no temporary left beside it
    CHECK(modeOf(made[0]) == 0600);
    CHECK(made[0].filename().string().size() == 64 + 2);
    // The register tiles' speeds, measured on this first compilation, are as private.
    if (fs::exists(folder / "gemm-tiles.txt")) CHECK(modeOf(folder / "gemm-tiles.txt") == 0600);
}

TEST_CASE("ObjectCache stores and loads by the full key, and reads no entry of absurd size", "[cache]") {
    TempDir dir;
    ObjectCache cache(dir.path.string());
    REQUIRE(cache.enabled());
    const std::string key = "gradc test\ncpu any\n\nsome IR", object = std::string("\x7f" "ELF and some code\0\1\2", 22);
    CHECK_FALSE(cache.load(key));
    CHECK(cache.problem().empty()); // a plain miss is no problem
    cache.store(key, object);
    CHECK(cache.load(key) == object);
    CHECK_FALSE(cache.load(key + " "));
    const fs::path entry = dir.path / ObjectCache::entryName(key);
    REQUIRE(fs::is_regular_file(entry));
    CHECK(readFile(entry).find(key) != std::string::npos); // the full key, not only its hash
    fs::resize_file(entry, uint64_t(1) << 33);               // sparse: 8 GiB claimed, none allocated
    CHECK_FALSE(cache.load(key));
    CHECK_THAT(cache.problem(), Contains("the cache entry is 8589934592 bytes, more than the limit of 1073741824 bytes; ignored"));
    cache.store(key, object); // replaced
    CHECK(cache.load(key) == object);
}
