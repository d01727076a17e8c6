# lock.sh acquire|release|show NAME [HOLDER] (run on the host by zdd)
# One deploy at a time per project: a directory ~/.zdd/locks/NAME (mkdir is atomic) holding
# a line about who holds it. acquire exits 1, printing the holder, when it is taken.
action=$1 name=$2 holder=${3:-}
dir=$HOME/.zdd/locks/$name
case "$action" in
    acquire)
        mkdir -p "$HOME/.zdd/locks"
        if mkdir "$dir" 2>/dev/null; then
            printf '%s\n' "$holder" > "$dir/holder"
            echo "locked"
        else
            echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo unknown)"
            exit 1
        fi ;;
    release)
        rm -rf "$dir" 2>/dev/null
        if [ -e "$dir" ]; then echo "cannot remove $dir"; exit 1; fi
        echo "released" ;;
    show)
        if [ -d "$dir" ]; then echo "locked by: $(cat "$dir/holder" 2>/dev/null || echo unknown)"; else echo "free"; fi ;;
    *) echo "usage: lock.sh acquire|release|show NAME [HOLDER]"; exit 2 ;;
esac
