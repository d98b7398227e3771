// FilesTests.cpp — output files (runtime/Files.h): checked before the work, written together
// after it; symlinks, devices, FIFOs, modes, owners, hard links, long names; TensorBoard
// event file names.
#include "Events.h"
#include "Files.h"
#include "Source.h"

#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <thread>
#include <unistd.h>

using namespace gradc;
namespace fs = std::filesystem;

namespace {

/// A folder of its own (two runs of the suite at once never share one), removed at the end.
struct Scratch : TempDir {
    explicit Scratch(const std::string& name) : TempDir("files_" + name) {}
    /// The names in the folder that are not `keep` (temporaries left behind, say).
    std::vector<std::string> others(const std::set<std::string>& keep) const {
        std::vector<std::string> out;
        for (auto& e : fs::directory_iterator(path))
            if (!keep.count(e.path().filename().string()))
                out.push_back(e.path().filename().string());
        return out;
    }
};

struct stat statOf(const std::string& p) {
    struct stat st {};
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    return st;
}

} // namespace

TEST_CASE("Outputs: a regular file is replaced atomically and keeps its mode, a new one is created",
          "[files]") {
    Scratch s("regular");
    s.write("old", "old contents");
    REQUIRE(::chmod(s.file("old").c_str(), 0600) == 0);
    writeFileAtomically(s.file("old"), "new contents");
    writeFileAtomically(s.file("new"), "fresh");
    CHECK(s.read("old") == "new contents");
    CHECK((statOf(s.file("old")).st_mode & 07777) == 0600);
    CHECK(s.read("new") == "fresh");
    const mode_t mask = ::umask(0);
    ::umask(mask);
    CHECK((statOf(s.file("new")).st_mode & 07777) == (0666 & ~mask));
    CHECK(s.others({"old", "new"}).empty());
}

TEST_CASE("Outputs: as root, a replaced file keeps its owner", "[files]") {
    if (::geteuid() != 0) return; // only root may give a file to someone else
    Scratch s("owner");
    s.write("f", "x");
    REQUIRE(::chown(s.file("f").c_str(), 65534, 65534) == 0);
    REQUIRE(::chmod(s.file("f").c_str(), 0640) == 0);
    writeFileAtomically(s.file("f"), "y");
    CHECK(statOf(s.file("f")).st_uid == 65534);
    CHECK(statOf(s.file("f")).st_gid == 65534);
    CHECK((statOf(s.file("f")).st_mode & 07777) == 0640);
    CHECK(s.read("f") == "y");
}

TEST_CASE("Outputs: a symlink is followed, its target is replaced and the link stays", "[files]") {
    Scratch s("symlink");
    fs::create_directories(s.path / "sub");
    s.write("sub/target", "old");
    REQUIRE(::chmod(s.file("sub/target").c_str(), 0600) == 0);
    fs::create_symlink("sub/target", s.path / "link");    // relative
    fs::create_symlink(s.file("link"), s.path / "link2"); // absolute, to a link
    writeFileAtomically(s.file("link2"), "new");
    CHECK(fs::is_symlink(s.path / "link"));
    CHECK(fs::is_symlink(s.path / "link2"));
    CHECK(s.read("sub/target") == "new");
    CHECK((statOf(s.file("sub/target")).st_mode & 07777) == 0600);
    // The temporary is made beside the target, and none is left.
    CHECK(s.others({"sub", "link", "link2"}).empty());
    CHECK(fs::directory_iterator(s.path / "sub")->path().filename() == "target");
    // A dangling link: its target is created.
    fs::create_symlink("sub/made", s.path / "dangling");
    writeFileAtomically(s.file("dangling"), "made");
    CHECK(fs::is_symlink(s.path / "dangling"));
    CHECK(s.read("sub/made") == "made");
    // A loop of links is an error, not a hang.
    fs::create_symlink("loop2", s.path / "loop1");
    fs::create_symlink("loop1", s.path / "loop2");
    CHECK_THAT(errorOf([&] { writeFileAtomically(s.file("loop1"), "x"); }),
               Catch::Contains("loop1: error: cannot write: Too many levels of symbolic links"));
}

TEST_CASE("Outputs: a hard link gets a new file, the other names keep the old contents",
          "[files]") {
    Scratch s("hardlink");
    s.write("a", "old");
    fs::create_hard_link(s.path / "a", s.path / "b");
    writeFileAtomically(s.file("a"), "new");
    CHECK(s.read("a") == "new");
    CHECK(s.read("b") == "old");
    CHECK(fs::hard_link_count(s.path / "a") == 1);
    // Two names of one file are one output: refused.
    fs::create_hard_link(s.path / "a", s.path / "c");
    OutputSet out;
    out.output(s.file("a"));
    CHECK_THAT(errorOf([&] { out.output(s.file("c")); }),
               Catch::StartsWith(s.file("c") +
                                 ": error: cannot write: it is the same file as the output '" +
                                 s.file("a") + "'"));
}

TEST_CASE("Outputs: a device is written through and stays a device", "[files]") {
    Scratch s("device");
    // /dev/null's twin, made here (root may make device nodes); else /dev/null itself, which
    // is only written to.
    std::string dev = s.file("null");
    if (::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) dev = "/dev/null";
    OutputSet out;
    out.output(dev, "the figure");
    out.output(dev, "the gradients"); // a device may be named twice
    out.set(dev, "<svg/>");
    out.commit();
    CHECK(S_ISCHR(statOf(dev).st_mode));
    CHECK(s.others({"null"}).empty());
    // Every write is checked: /dev/full is a device that is always full.
    if (::access("/dev/full", W_OK) == 0) {
        PendingFile full(checkOutput("/dev/full"));
        CHECK_THAT(errorOf([&] { full.write("x"); }),
                   Catch::StartsWith("/dev/full: error: cannot write: No space left on device"));
    }
}

TEST_CASE("Outputs: a FIFO is written through and stays a FIFO", "[files]") {
    Scratch s("fifo");
    REQUIRE(::mkfifo(s.file("pipe").c_str(), 0600) == 0);
    std::string got;
    std::thread reader([&] {
        std::ifstream in(s.file("pipe"), std::ios::binary);
        got.assign(std::istreambuf_iterator<char>(in), {});
    });
    writeFileAtomically(s.file("pipe"), "through the pipe");
    reader.join();
    CHECK(got == "through the pipe");
    CHECK(S_ISFIFO(statOf(s.file("pipe")).st_mode));
    CHECK(s.others({"pipe"}).empty());
}

TEST_CASE("Outputs: what cannot be an output is refused before any work", "[files]") {
    Scratch s("refused");
    fs::create_directories(s.path / "dir");
    s.write("file", "x");
    CHECK_THAT(
        errorOf([&] { checkOutput(s.file("dir"), "the figure"); }),
        Catch::StartsWith(s.file("dir") + ": error: cannot write the figure: it is a directory"));
    CHECK_THAT(errorOf([&] { checkOutput(s.file("dir/")); }), Catch::Contains("it names a folder"));
    CHECK_THAT(errorOf([&] { checkOutput(s.file("missing/x.svg")); }),
               Catch::StartsWith(s.file("missing/x.svg") + ": error: cannot write: the folder '" +
                                 s.file("missing") + "' does not exist"));
    CHECK_THAT(errorOf([&] { checkOutput(s.file("file/x.svg")); }),
               Catch::Contains("Not a directory"));
    CHECK_THAT(errorOf([&] { checkOutputDirectory(s.file("file/sub"), "the log directory"); }),
               Catch::StartsWith(s.file("file/sub") + ": error: cannot write the log directory: '" +
                                 s.file("file") + "' is not a folder"));
    checkOutputDirectory(s.file("new/deeper")); // made later, in a folder that may be written
    CHECK_FALSE(fs::exists(s.path / "new"));
    if (::geteuid() != 0) { // root may write anywhere
        fs::create_directories(s.path / "ro");
        fs::permissions(s.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
        CHECK_THAT(errorOf([&] { checkOutput(s.file("ro/x")); }),
                   Catch::Contains("Permission denied"));
        fs::permissions(s.path / "ro", fs::perms::owner_all);
    }
}

TEST_CASE("Outputs: no two outputs, and no output and input, are one file", "[files]") {
    Scratch s("same");
    s.write("model.nn", "input 4\n");
    fs::create_symlink("model.nn", s.path / "alias.nn");
    fs::create_directories(s.path / "sub");
    {
        OutputSet out;
        out.input(s.file("model.nn"));
        CHECK_THAT(errorOf([&] { out.output(s.file("model.nn"), "the figure"); }),
                   Catch::StartsWith(
                       s.file("model.nn") +
                       ": error: cannot write the figure: it is the same file as the input"));
        CHECK_THAT(errorOf([&] { out.output(s.file("alias.nn")); }),
                   Catch::Contains("the same file as the input"));
        CHECK_THAT(errorOf([&] { out.output(s.file("sub/../model.nn")); }),
                   Catch::Contains("the same file as the input"));
    }
    {
        // Files that do not exist yet are compared by their resolved paths.
        OutputSet out;
        out.output(s.file("x.o"));
        CHECK_THAT(errorOf([&] { out.output(s.file("sub/../x.o"), "the header"); }),
                   Catch::StartsWith(
                       s.file("sub/../x.o") +
                       ": error: cannot write the header: it is the same file as the output '" +
                       s.file("x.o") + "'"));
        // An input declared after the output it is.
        CHECK_THAT(errorOf([&] { out.input(s.file("x.o")); }),
                   Catch::StartsWith(s.file("x.o") +
                                     ": error: cannot write: it is the same file as the input"));
        out.input(s.file("model.nn"));
        out.input(s.file("alias.nn")); // two inputs may be one file
    }
    CHECK(s.others({"model.nn", "alias.nn", "sub"}).empty());
}

TEST_CASE("Outputs: a run that fails leaves every file as it was and no temporary", "[files]") {
    Scratch s("failed");
    s.write("p", "old p");
    s.write("log", "old log");
    {
        OutputSet out;
        out.output(s.file("p"));
        out.output(s.file("q"));
        out.output(s.file("log"));
        PendingFile& log = out.stream(s.file("log"));
        log.write("half a log");
        CHECK_FALSE(log.temporary().empty());
        CHECK(fs::exists(log.temporary()));
        out.set(s.file("p"), "new p");
        out.set(s.file("q"), "new q");
        // ... and the run fails here: the set is destroyed uncommitted.
    }
    CHECK(s.read("p") == "old p");
    CHECK(s.read("log") == "old log");
    CHECK_FALSE(fs::exists(s.path / "q"));
    CHECK(s.others({"p", "log"}).empty());
    {
        OutputSet out;
        out.output(s.file("p"));
        out.output(s.file("q"));
        out.output(s.file("log"));
        out.stream(s.file("log")).write("a log");
        out.set(s.file("p"), "new p");
        out.set(s.file("q"), "new q");
        out.commit();
    }
    CHECK(s.read("p") == "new p");
    CHECK(s.read("q") == "new q");
    CHECK(s.read("log") == "a log");
    CHECK(s.others({"p", "q", "log"}).empty());
}

TEST_CASE("Outputs: a 255-character name works (the temporary's name stays within NAME_MAX)",
          "[files]") {
    Scratch s("long");
    for (size_t n : {250, 255}) {
        const std::string name = std::string(n - 4, 'a') + ".svg";
        writeFileAtomically(s.file(name), "long");
        CHECK(s.read(name) == "long");
        PendingFile f(checkOutput(s.file(name)));
        CHECK(fs::path(f.temporary()).filename().string().size() <= 255);
        CHECK(fs::path(f.temporary()).parent_path() == s.path);
    }
    CHECK(s.others({std::string(246, 'a') + ".svg", std::string(251, 'a') + ".svg"}).empty());
}

TEST_CASE("TensorBoard event files are named as SummaryWriter names them and never overwritten",
          "[files][train]") {
    Scratch s("events");
    const std::string dir = s.file("tb");
    std::string first, second;
    {
        // Two writers in one folder in the same second: two files.
        EventWriter a(dir), b(dir);
        a.scalar("x", 1, 1.0);
        b.scalar("x", 1, 2.0);
        a.close(), b.close();
        first = a.path(), second = b.path();
    }
    CHECK(first != second);
    char host[256] = {};
    REQUIRE(::gethostname(host, sizeof host - 1) == 0);
    const std::regex name("events\\.out\\.tfevents\\.[0-9]{10}\\." +
                          std::regex_replace(host, std::regex("[.^$|()\\[\\]{}*+?\\\\]"), "\\$&") +
                          "\\." + std::to_string(::getpid()) + "\\.[0-9]+");
    CHECK(std::regex_match(fs::path(first).filename().string(), name));
    CHECK(std::regex_match(fs::path(second).filename().string(), name));
    size_t files = 0;
    for (auto& e : fs::directory_iterator(dir))
        files += fs::file_size(e.path()) > 0;
    CHECK(files == 2);
}
