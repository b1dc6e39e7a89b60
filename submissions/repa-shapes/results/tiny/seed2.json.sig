{
 "key": "0551c8948f5b38e6",
 "signature": "qdbXlVAnJfZr5VY9TWf7wGAJ3jrx6ydOi8c8/suLuuZilFrQA5cqtujg0jFSX4qfMKfmw+n/sU5ocfbIeLW0Ag=="
}
